//! Calibration: the user's domain text cut into windows, run through the unpruned model layer by
//! layer (one layer's activations alive at a time, the LM head never needed), gathering the
//! per-neuron statistics that data-driven scores and recovery use.

use crate::error::{bail, Result};
use crate::kernels::with_slice;
use crate::model::{Layer, LayerTrace, Model};
use candle_core::Tensor;

/// Per-layer statistics of the MLP over all calibration tokens.
#[derive(Debug, Clone)]
pub struct LayerStats {
    /// Σ x_j² of each MLP input feature (after the norm), `[hidden]`.
    pub input_sq: Vec<f64>,
    /// Σ a_i and Σ a_i² of each intermediate neuron (input of the down projection), `[intermediate]`.
    pub act_sum: Vec<f64>,
    pub act_sq: Vec<f64>,
    /// Gram matrix Σ a aᵀ of intermediate activations, `[intermediate, intermediate]`, when requested.
    pub gram: Option<Tensor>,
    /// Σ z_j² of each input feature of the attention output projection, `[heads·head_dim]`.
    pub attn_sq: Vec<f64>,
    /// Gram matrix of the attention output projection's input, when requested.
    pub attn_gram: Option<Tensor>,
    /// Mean cosine similarity between the layer's input and output residual streams.
    pub io_cosine: f64,
    /// Calibration tokens the sums run over.
    pub tokens: usize,
}

/// A pruned layer handed back during sequential calibration: its weights and the MLP neurons kept.
pub struct Replacement {
    pub layer: Layer,
    pub kept: Vec<usize>,
    /// The attention changed too (heads removed): the whole layer must be re-run.
    pub attention_changed: bool,
}

/// Statistics of every layer plus the token count they were gathered on.
#[derive(Debug, Clone)]
pub struct CalibStats {
    pub layers: Vec<LayerStats>,
    pub tokens: usize,
    /// The residual stream at every layer boundary (`layers + 1` entries), last token of each window
    /// only, `[samples · hidden]` each: what the angular distance of a block of layers is measured on.
    pub boundary: Vec<Vec<f32>>,
}

/// Angular distance `arccos(cos(x_l, x_{l+n})) / π` between the residual stream before layer `l`
/// and after layer `l + n − 1`, averaged over the windows' last tokens, for every start `l`
/// (Gromov et al. 2024, "The Unreasonable Ineffectiveness of the Deeper Layers").
pub fn block_distances(boundary: &[Vec<f32>], n: usize, hidden: usize) -> Result<Vec<f64>> {
    let layers = boundary.len().saturating_sub(1);
    if n == 0 || n >= layers {
        bail!(Input, "a block of {n} layers must leave at least one of the model's {layers} layers");
    }
    Ok((0..=layers - n)
        .map(|l| {
            let (a, b) = (&boundary[l], &boundary[l + n]);
            let rows = a.len() / hidden.max(1);
            let total: f64 = a
                .chunks_exact(hidden)
                .zip(b.chunks_exact(hidden))
                .map(|(x, y)| cosine(x, y).clamp(-1.0, 1.0).acos() / std::f64::consts::PI)
                .sum();
            total / rows.max(1) as f64
        })
        .collect())
}

fn cosine(x: &[f32], y: &[f32]) -> f64 {
    let (mut d, mut nx, mut ny) = (0f64, 0f64, 0f64);
    for (&p, &q) in x.iter().zip(y) {
        d += (p * q) as f64;
        nx += (p * p) as f64;
        ny += (q * q) as f64;
    }
    d / (nx.sqrt() * ny.sqrt()).max(1e-12)
}

/// The last token's row of each window of `x` (`[samples·len, hidden]`).
fn last_tokens(x: &Tensor, samples: usize, len: usize) -> Result<Vec<f32>> {
    let (_, h) = x.dims2()?;
    with_slice(x, |s| (0..samples).flat_map(|w| s[((w + 1) * len - 1) * h..(w + 1) * len * h].to_vec()).collect())
}

/// The first `samples` consecutive windows of `len` ids; a clear error if the text is too short.
pub fn windows(ids: &[u32], samples: usize, len: usize) -> Result<Vec<u32>> {
    if samples == 0 || len < 2 {
        bail!(Input, "--calib-samples must be at least 1 and --calib-len at least 2");
    }
    let need = samples.checked_mul(len).ok_or_else(|| crate::Error::Input("calibration size overflows".into()))?;
    if ids.len() < need {
        bail!(
            Input,
            "the calibration text has {} tokens; {samples} windows of {len} need {need} (about {} more tokens, roughly {} more characters)",
            ids.len(),
            need - ids.len(),
            (need - ids.len()) * 4
        );
    }
    Ok(ids[..need].to_vec())
}

fn col_sums(t: &Tensor, sq: bool) -> Result<Vec<f64>> {
    let (_, n) = t.dims2()?;
    with_slice(t, |s| {
        let mut out = vec![0f64; n];
        for row in s.chunks_exact(n) {
            for (o, &x) in out.iter_mut().zip(row) {
                *o += if sq { (x * x) as f64 } else { x as f64 };
            }
        }
        out
    })
}

fn mean_cosine(a: &Tensor, b: &Tensor) -> Result<f64> {
    let (_, n) = a.dims2()?;
    let (av, bv) = (a.flatten_all()?.to_vec1::<f32>()?, b.flatten_all()?.to_vec1::<f32>()?);
    let rows = av.len() / n.max(1);
    let total: f64 = av.chunks_exact(n).zip(bv.chunks_exact(n)).map(|(x, y)| cosine(x, y)).sum();
    Ok(total / rows.max(1) as f64)
}

/// Runs `ids` (`samples` windows of `len`) through the model layer by layer, gathering statistics.
/// `gram` also accumulates each layer's activation Gram matrix (for recovery), handed to `on_layer`
/// and then dropped, so only one layer's Gram matrix is alive at a time.
pub fn collect(
    model: &Model,
    ids: &[u32],
    samples: usize,
    len: usize,
    gram: bool,
    on_layer: &mut dyn FnMut(usize, &LayerStats) -> Result<Option<Replacement>>,
    progress: &mut dyn FnMut(usize, usize) -> bool,
) -> Result<CalibStats> {
    let mut x = model.embed(ids, samples, len)?;
    let n_layers = model.layers.len();
    let mut layers = Vec::with_capacity(n_layers);
    let mut boundary = vec![last_tokens(&x, samples, len)?];
    for l in 0..n_layers {
        let mut stats: Option<Result<LayerStats>> = None;
        let mut saved: Option<(Tensor, Tensor)> = None;
        let mut tr = |t: LayerTrace| {
            saved = Some((t.mlp_residual.clone(), t.mlp_hidden.clone()));
            stats = Some((|| {
                let a = t.mlp_hidden;
                let mlp_gram = if gram { Some(crate::kernels::gram(a)?) } else { None };
                let attn_gram = if gram { Some(crate::kernels::gram(t.attn_hidden)?) } else { None };
                Ok(LayerStats {
                    input_sq: col_sums(t.mlp_input, true)?,
                    act_sum: col_sums(a, false)?,
                    act_sq: col_sums(a, true)?,
                    gram: mlp_gram,
                    attn_sq: col_sums(t.attn_hidden, true)?,
                    attn_gram,
                    io_cosine: 0.0,
                    tokens: ids.len(),
                })
            })());
        };
        let y = model.layer_forward(l, &x, samples, len, None, Some(&mut tr))?;
        let Some(st) = stats else {
            bail!(Input, "layer {l} produced no statistics");
        };
        let mut st = st?;
        st.io_cosine = mean_cosine(&x, &y)?;
        // Sequential calibration: a pruned layer hands back its new weights, and the next layer
        // sees the pruned layer's output, so later layers adapt to earlier pruning.
        // When only the MLP changed, the new output is the saved post-attention residual plus the
        // pruned MLP applied to the kept neurons' saved activations; otherwise the layer is re-run.
        let y = match (on_layer(l, &st)?, saved) {
            (Some(r), Some((residual, mid))) if !r.attention_changed => {
                let idx: Vec<u32> = r.kept.iter().map(|&i| i as u32).collect();
                let idx = Tensor::from_vec(idx, r.kept.len(), &candle_core::Device::Cpu)?;
                let mid_kept = mid.index_select(&idx, 1)?.contiguous()?;
                (residual + model.mlp_output(&r.layer, &mid_kept)?)?
            }
            (Some(r), _) => model.layer_forward_with(&r.layer, l, &x, samples, len, None, None)?,
            (None, _) => y,
        };
        // The Gram matrices are large (intermediate²): used by `on_layer`, then dropped.
        st.gram = None;
        st.attn_gram = None;
        layers.push(st);
        x = y;
        boundary.push(last_tokens(&x, samples, len)?);
        crate::error::go_on(progress(l + 1, n_layers))?;
    }
    Ok(CalibStats { layers, tokens: ids.len(), boundary })
}
