//! Pruned layers of a streamed model kept outside wasm memory, in JavaScript `Float32Array`s: a
//! model too large for the page's 4 GiB leaves its pruned layers in the worker's JavaScript heap
//! until they are scored or written. Each tensor is copied straight between its f32 values and
//! its array, so a layer is never held twice in wasm memory on its way.

use crate::error::{bail, Result};
use crate::model::store::Spill;
use crate::model::Layer;
use candle_core::{Device, Tensor};
use js_sys::Float32Array;

/// A layer's tensors: name, shape and values.
type Held = Vec<(String, Vec<usize>, Float32Array)>;

#[derive(Default)]
pub struct JsSpill(Vec<Option<Held>>);

impl Spill for JsSpill {
    fn put(&mut self, l: usize, layer: &Layer) -> Result<()> {
        let held = layer
            .named()
            .into_iter()
            .map(|(name, t)| {
                let a = crate::kernels::with_slice(&t, |v| Float32Array::from(v))?;
                Ok((name, t.dims().to_vec(), a))
            })
            .collect::<Result<Held>>()?;
        if self.0.len() <= l {
            self.0.resize(l + 1, None);
        }
        self.0[l] = Some(held);
        Ok(())
    }

    fn get(&mut self, l: usize) -> Result<Layer> {
        let Some(Some(held)) = self.0.get(l) else {
            bail!(Input, "layer {l} was never spilled");
        };
        let mut by_name = std::collections::HashMap::new();
        for (name, shape, a) in held {
            let mut v = vec![0f32; a.length() as usize];
            a.copy_to(&mut v);
            by_name.insert(name.as_str(), Tensor::from_vec(v, shape.as_slice(), &Device::Cpu)?);
        }
        Layer::from_named(&mut |name| by_name.remove(name))
    }
}
