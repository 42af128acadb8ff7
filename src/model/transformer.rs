//! The decoder-only transformer, f32 on candle-core, written to match transformers' eager implementation
//! for Llama, Mistral, Qwen2, Qwen3, Gemma 2 and Gemma 3.

use crate::error::{bail, Error, Result};
use crate::formats::source::TensorSource;
use crate::kernels::{add, attention, silu_mul, to_heads, AttnShape, Rope};
use crate::model::config::{Activation, Arch, LayerType, ModelConfig, RopeScaling};
pub use crate::model::layer::{layer_tensors, Layer, Linear};
use crate::model::store::{LayerStore, Table};
use candle_core::{Device, Tensor};

/// Several linear maps of one input (see [`crate::kernels::linears`]).
fn projections<const N: usize>(x: &Tensor, maps: [&Linear; N]) -> Result<[Tensor; N]> {
    let pairs = maps.map(|l| (&l.weight, l.bias.as_ref()));
    let outs = crate::kernels::linears(x, &pairs)?;
    outs.try_into().map_err(|_| Error::Input("a projection went missing".into()))
}

/// Reads tensors from `src` in f32, refusing a shape other than the one expected and values that
/// are not finite.
pub(crate) fn checked_reader(src: &mut dyn TensorSource) -> impl FnMut(&str, &[usize]) -> Result<Tensor> + '_ {
    move |name: &str, shape: &[usize]| {
        let t = src.load(name)?;
        expect_shape(name, &t, shape)?;
        expect_finite(name, &t)?;
        Ok(t)
    }
}

/// Bytes (in f32) of each part in which [`Model::each_tensor`] gives a table kept in the store.
pub const TABLE_PART_BYTES: usize = 32 << 20;

/// A loaded model.
#[derive(Debug, Clone)]
pub struct Model {
    pub cfg: ModelConfig,
    pub embed_tokens: Tensor,
    pub layers: Vec<Layer>,
    pub norm: Tensor,
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>,
}

/// Keys and values seen so far, per layer, for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    kv: Vec<Option<(Tensor, Tensor)>>,
    /// Number of positions already in the cache.
    pub len: usize,
}

pub(crate) fn expect_shape(name: &str, t: &Tensor, expected: &[usize]) -> Result<()> {
    if t.dims() != expected {
        return Err(Error::Shape { name: name.to_string(), expected: expected.to_vec(), got: t.dims().to_vec() });
    }
    Ok(())
}

/// Refuses a tensor with NaN or infinite values (a corrupt file, or data laid out other than its
/// header says): scores, recovery and perplexity would all be meaningless.
pub(crate) fn expect_finite(name: &str, t: &Tensor) -> Result<()> {
    // Blocks scanned without an early exit (so the scan vectorizes), then the first bad one searched.
    let bad = crate::kernels::with_slice(t, |v| {
        let block_bad = |c: &[f32]| c.iter().fold(false, |b, x| b | !x.is_finite());
        let first = v.chunks(4096).position(block_bad)?;
        v[first * 4096..].iter().position(|x| !x.is_finite()).map(|i| first * 4096 + i)
    })?;
    if let Some(i) = bad {
        let n = crate::kernels::with_slice(t, |v| v.iter().filter(|x| !x.is_finite()).count())?;
        bail!(
            Input,
            "tensor `{name}` holds {n} NaN or infinite value{} (the first at element {i}): the model file is corrupt",
            if n == 1 { "" } else { "s" }
        );
    }
    Ok(())
}

/// Every tensor the config implies, with its shape, in transformers' names and order.
pub fn expected_tensors(cfg: &ModelConfig) -> Vec<(String, Vec<usize>)> {
    let h = cfg.hidden_size;
    let mut v = vec![("model.embed_tokens.weight".to_string(), vec![cfg.vocab_size, h])];
    for l in 0..cfg.num_hidden_layers {
        v.extend(layer_tensors(cfg, l).into_iter().map(|(n, s)| (format!("model.layers.{l}.{n}"), s)));
    }
    v.push(("model.norm.weight".to_string(), vec![h]));
    if !cfg.tie_word_embeddings {
        v.push(("lm_head.weight".to_string(), vec![cfg.vocab_size, h]));
    }
    v
}

/// Checks, from headers alone, that `src` holds every tensor the config needs with the right shape.
pub fn check_source(cfg: &ModelConfig, src: &dyn TensorSource) -> Result<()> {
    for (name, shape) in expected_tensors(cfg) {
        match src.shape(&name) {
            None => return Err(Error::MissingTensor(name)),
            Some(s) if s != shape => return Err(Error::Shape { name, expected: shape, got: s }),
            _ => {}
        }
    }
    extra_layers(cfg.num_hidden_layers, src.names().iter().map(String::as_str), "model.layers.")
}

/// Refuses tensors of layers past the config's count (a config that describes fewer layers than
/// the file holds would be run on part of the model without a word). `prefix` is the layer names'.
pub(crate) fn extra_layers<'a>(n: usize, names: impl Iterator<Item = &'a str>, prefix: &str) -> Result<()> {
    let past = names
        .filter_map(|name| name.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
        .filter(|&i| i >= n)
        .max();
    if let Some(i) = past {
        bail!(Config, "the weights hold layer {i}, but the model's config describes {n} layers");
    }
    Ok(())
}

/// What the forward pass can report about one layer (for calibration and pruning statistics).
pub struct LayerTrace<'a> {
    pub layer: usize,
    /// Input of the MLP (after its norm), `[n, hidden]`.
    pub mlp_input: &'a Tensor,
    /// Input of the MLP's down projection, `[n, intermediate]`.
    pub mlp_hidden: &'a Tensor,
    /// Input of the attention's output projection, `[n, heads·head_dim]`.
    pub attn_hidden: &'a Tensor,
    /// The residual stream after attention, before the MLP adds to it, `[n, hidden]`.
    pub mlp_residual: &'a Tensor,
}

impl Model {
    /// Loads every tensor the config needs from `src`, checking each shape. `progress(done, total)` is
    /// called after each layer.
    pub fn load(
        cfg: ModelConfig,
        src: &mut dyn TensorSource,
        progress: &mut dyn FnMut(usize, usize) -> bool,
    ) -> Result<Self> {
        let mut model = Model::load_shell(cfg, src)?;
        let total = model.cfg.num_hidden_layers;
        let mut get = checked_reader(src);
        for l in 0..total {
            model.layers.push(Layer::read(&model.cfg, l, &mut get)?);
            crate::error::go_on(progress(l + 1, total))?;
        }
        Ok(model)
    }

    /// A model shaped `cfg` with no weights yet (empty tensors).
    pub(crate) fn empty(cfg: ModelConfig) -> Result<Self> {
        let none = || Tensor::zeros(0, candle_core::DType::F32, &Device::Cpu);
        Ok(Model { cfg, embed_tokens: none()?, layers: Vec::new(), norm: none()?, lm_head: None })
    }

    /// The embedding, final norm and LM head of the model shaped `cfg` in `src`, without its layers:
    /// the rest of a model whose layers are read as they are used ([`crate::model::store::Streamed`]).
    pub fn load_shell(cfg: ModelConfig, src: &mut dyn TensorSource) -> Result<Self> {
        cfg.validate()?;
        check_source(&cfg, src)?;
        let h = cfg.hidden_size;
        let mut get = checked_reader(src);
        let embed_tokens = get("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let norm = get("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings { None } else { Some(get("lm_head.weight", &[cfg.vocab_size, h])?) };
        Ok(Model { cfg, embed_tokens, layers: Vec::new(), norm, lm_head })
    }

    /// The final norm of the model shaped `cfg` in `src`, without its layers or its tables (the
    /// embedding and LM head): they stay in `src`, read by rows as they are used (a
    /// [`crate::model::store::Streamed`] store [`tables_from_source`](crate::model::store::Streamed::tables_from_source)).
    pub fn load_shell_without_tables(cfg: ModelConfig, src: &mut dyn TensorSource) -> Result<Self> {
        cfg.validate()?;
        check_source(&cfg, src)?;
        let norm = checked_reader(src)("model.norm.weight", &[cfg.hidden_size])?;
        Ok(Model { norm, ..Model::empty(cfg)? })
    }

    /// Whether the embedding and LM head are not in memory but in the store of the model's layers.
    pub fn tables_in_store(&self) -> bool {
        self.embed_tokens.elem_count() == 0
    }

    /// Refuses to run a model whose layers are not all in memory.
    pub(crate) fn check_resident(&self) -> Result<()> {
        if self.layers.len() != self.cfg.num_hidden_layers {
            bail!(
                Input,
                "this model's layers are read from its file as they are used; this step needs them in memory ({} of {})",
                self.layers.len(),
                self.cfg.num_hidden_layers
            );
        }
        Ok(())
    }

    /// Total parameter count (tied embeddings once).
    pub fn parameter_count(&self) -> u64 {
        self.cfg.parameter_count()
    }

    /// A norm's effective weight (Gemma scales by `1 + w`).
    fn norm_weight(&self, w: &Tensor) -> Result<Vec<f32>> {
        let mut v = w.to_vec1::<f32>()?;
        if self.cfg.arch.is_gemma() {
            v.iter_mut().for_each(|x| *x += 1.0);
        }
        Ok(v)
    }

    pub(crate) fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Result<Tensor> {
        crate::kernels::rms_norm(x, &self.norm_weight(w)?, self.cfg.rms_norm_eps as f32)
    }

    /// Inverse RoPE frequencies for a layer kind, as transformers computes them.
    fn inv_freq(&self, kind: LayerType) -> Vec<f32> {
        let c = &self.cfg;
        let local = c.arch == Arch::Gemma3 && kind == LayerType::Sliding;
        let base = if local { c.rope_local_base_freq.unwrap_or(10000.0) } else { c.rope_theta };
        let d = c.head_dim;
        let mut inv = crate::model::config::rope_freqs(base, d);
        if local {
            return inv;
        }
        match &c.rope_scaling {
            None => {}
            Some(RopeScaling::Linear { factor }) => inv.iter_mut().for_each(|f| *f = (*f as f64 / factor) as f32),
            Some(RopeScaling::Llama3 {
                factor,
                low_freq_factor,
                high_freq_factor,
                original_max_position_embeddings,
            }) => {
                for f in inv.iter_mut() {
                    let scaled = RopeScaling::llama3_scale(
                        *f as f64,
                        *factor,
                        *low_freq_factor,
                        *high_freq_factor,
                        *original_max_position_embeddings,
                    );
                    *f = scaled as f32;
                }
            }
        }
        inv
    }

    /// cos and sin tables `[t, head_dim]` for positions `start..start+t`.
    fn rope_tables(&self, kind: LayerType, start: usize, t: usize) -> (Vec<f32>, Vec<f32>) {
        let inv = self.inv_freq(kind);
        let half = inv.len();
        let mut cos = Vec::with_capacity(t * 2 * half);
        let mut sin = Vec::with_capacity(t * 2 * half);
        for p in start..start + t {
            let row: Vec<f32> = inv.iter().map(|f| p as f32 * f).collect();
            for _ in 0..2 {
                cos.extend(row.iter().map(|x| x.cos()));
                sin.extend(row.iter().map(|x| x.sin()));
            }
        }
        (cos, sin)
    }

    /// Embeds token ids `[b, t]` into `[b·t, hidden]`.
    pub fn embed(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        self.embed_in(&mut Vec::new(), ids, b, t)
    }

    /// [`Model::embed`], with the table's rows read from `layers` where it keeps the tables.
    pub fn embed_in(&self, layers: &mut dyn LayerStore, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        if ids.len() != b * t {
            bail!(Input, "expected {} ids, got {}", b * t, ids.len());
        }
        if let Some(&bad) = ids.iter().find(|&&i| i as usize >= self.cfg.vocab_size) {
            bail!(Input, "token id {bad} is outside the vocabulary of {}", self.cfg.vocab_size);
        }
        let x = if self.tables_in_store() {
            crate::model::tables::gather_rows(layers, ids, self.cfg.hidden_size)?
        } else {
            let idx = Tensor::from_slice(ids, ids.len(), &Device::Cpu)?;
            self.embed_tokens.index_select(&idx, 0)?
        };
        Ok(if self.cfg.arch.is_gemma() {
            // transformers rounds the normalizer to the compute dtype (f32 here).
            x.affine((self.cfg.hidden_size as f32).sqrt() as f64, 0.0)?
        } else {
            x
        })
    }

    pub(crate) fn softcap(x: &Tensor, cap: f64) -> Result<Tensor> {
        Ok(((x / cap)?.tanh()? * cap)?)
    }

    /// Runs layer `l` on `x` (`[b·t, hidden]`, positions `start..start+t`), returning the new residual stream.
    pub fn layer_forward(
        &self,
        l: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        cache: Option<&mut KvCache>,
        trace: Option<&mut dyn FnMut(LayerTrace)>,
    ) -> Result<Tensor> {
        self.layer_forward_with(&self.layers[l], l, x, b, t, cache, trace)
    }

    /// As [`Model::layer_forward`], with `layer`'s weights standing in for layer `l`'s (e.g. pruned ones).
    #[allow(clippy::too_many_arguments)]
    pub fn layer_forward_with(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        cache: Option<&mut KvCache>,
        trace: Option<&mut dyn FnMut(LayerTrace)>,
    ) -> Result<Tensor> {
        let (x, mid) = self.layer_hidden(layer, l, x, b, t, cache, trace)?;
        add(&x, &self.mlp_output(layer, &mid)?)
    }

    /// Layer `l` (with `layer`'s weights) up to its MLP's down projection: the residual stream after
    /// attention and the MLP's hidden activations, from which the output is
    /// `residual + mlp_output(layer, mid)`.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_hidden(
        &self,
        layer: &Layer,
        l: usize,
        x: &Tensor,
        b: usize,
        t: usize,
        cache: Option<&mut KvCache>,
        trace: Option<&mut dyn FnMut(LayerTrace)>,
    ) -> Result<(Tensor, Tensor)> {
        let c = &self.cfg;
        let kind = c.layer_types[l];
        // Head counts from the layer's own weights, so a layer with pruned heads runs as it is.
        let hd = c.head_dim;
        let (nh, nkv) = (layer.q_proj.weight.dim(0)? / hd, layer.k_proj.weight.dim(0)? / hd);
        if nkv == 0 || !nh.is_multiple_of(nkv) {
            bail!(Config, "layer {l} has {nh} query heads for {nkv} KV heads");
        }
        let g = nh / nkv;
        let start = cache.as_ref().map_or(0, |c| c.len);

        let h = self.rms_norm(x, &layer.input_layernorm)?;
        let (cos, sin) = self.rope_tables(kind, start, t);
        let rope = Rope { cos: &cos, sin: &sin };
        let eps = c.rms_norm_eps as f32;
        // Projections laid out as heads `[b, n, t, hd]`, q/k normed per head and rotated on the way.
        let heads = |p: &Tensor, n: usize, norm: &Option<Tensor>, rope: Option<&Rope>| -> Result<Tensor> {
            let w = norm.as_ref().map(|w| self.norm_weight(w)).transpose()?;
            to_heads(p, (b, t, n, hd), w.as_deref().map(|w| (w, eps)), rope)
        };
        let [pq, pk, pv] = projections(&h, [&layer.q_proj, &layer.k_proj, &layer.v_proj])?;
        let q = heads(&pq, nh, &layer.q_norm, Some(&rope))?;
        let mut k = heads(&pk, nkv, &layer.k_norm, Some(&rope))?;
        let mut v = heads(&pv, nkv, &None, None)?;
        drop((pq, pk, pv));
        if let Some(cache) = cache {
            if cache.kv.len() <= l {
                cache.kv.resize(l + 1, None);
            }
            if let Some((pk, pv)) = &cache.kv[l] {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            cache.kv[l] = Some((k.clone(), v.clone()));
        }
        let s = k.dim(2)?;
        // Query heads grouped by their KV head: [b, nkv, g·t, hd] against [b, nkv, s, hd].
        let qg = q.reshape((b, nkv, g * t, hd))?;
        let shape = AttnShape {
            batch: b,
            kv_heads: nkv,
            group: g,
            t,
            s,
            head_dim: hd,
            start,
            scale: c.attn_scale() as f32,
            softcap: c.attn_logit_softcapping.map(|x| x as f32),
            window: match kind {
                LayerType::Sliding => c.sliding_window,
                LayerType::Full => None,
            },
        };
        let attn = attention(&qg, &k, &v, &shape)?;
        let mut a = layer.o_proj.forward(&attn)?;
        if c.arch.is_gemma() {
            a = self.rms_norm(&a, &layer.post_attention_layernorm)?;
        }
        let x = add(x, &a)?;
        let h = match &layer.pre_feedforward_layernorm {
            Some(w) => self.rms_norm(&x, w)?,
            None => self.rms_norm(&x, &layer.post_attention_layernorm)?,
        };
        // In a block, so the pre-activation is freed as soon as the GLU is formed.
        let mid = {
            let [pre, up] = projections(&h, [&layer.gate_proj, &layer.up_proj])?;
            match c.hidden_act {
                Activation::Silu => silu_mul(&pre, &up)?,
                Activation::GeluTanh => (pre.gelu()? * up)?,
                Activation::Gelu => (pre.gelu_erf()? * up)?,
            }
        };
        if let Some(f) = trace {
            f(LayerTrace { layer: l, mlp_input: &h, mlp_hidden: &mid, attn_hidden: &attn, mlp_residual: &x });
        }
        Ok((x, mid))
    }

    /// The MLP's contribution to the residual stream from its hidden activations `mid`
    /// (down projection, then Gemma's post-feed-forward norm).
    pub fn mlp_output(&self, layer: &Layer, mid: &Tensor) -> Result<Tensor> {
        let m = layer.down_proj.forward(mid)?;
        Ok(match &layer.post_feedforward_layernorm {
            Some(w) => self.rms_norm(&m, w)?,
            None => m,
        })
    }

    /// Final norm and LM head on `[n, hidden]` → logits `[n, vocab]`.
    pub fn head(&self, x: &Tensor) -> Result<Tensor> {
        let h = self.rms_norm(x, &self.norm)?;
        let w = self.lm_head.as_ref().unwrap_or(&self.embed_tokens);
        let mut logits = crate::kernels::linear(&h, w, None)?;
        if let Some(cap) = self.cfg.final_logit_softcapping {
            logits = Self::softcap(&logits, cap)?;
        }
        Ok(logits)
    }

    /// Runs every layer on token ids laid out `[b, t]`, continuing `cache` if given; `[b·t, hidden]`.
    fn run_layers(&self, ids: &[u32], b: usize, t: usize, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.check_resident()?;
        let mut x = self.embed(ids, b, t)?;
        for l in 0..self.layers.len() {
            x = self.layer_forward(l, &x, b, t, cache.as_deref_mut(), None)?;
        }
        if let Some(c) = cache {
            c.len += t;
        }
        Ok(x)
    }

    /// Logits `[b·t, vocab]` for token ids laid out `[b, t]`, optionally continuing a cache.
    pub fn forward(&self, ids: &[u32], b: usize, t: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        self.head(&self.run_layers(ids, b, t, cache)?)
    }

    /// Logits of the last position only, `[b, vocab]` (saves the LM head on every other position).
    pub fn forward_last(&self, ids: &[u32], b: usize, t: usize, cache: Option<&mut KvCache>) -> Result<Tensor> {
        let x = self.run_layers(ids, b, t, cache)?;
        let last = x.reshape((b, t, self.cfg.hidden_size))?.narrow(1, t - 1, 1)?.reshape((b, self.cfg.hidden_size))?;
        self.head(&last)
    }
}

impl Model {
    /// Every weight by its transformers name, in `expected_tensors` order.
    /// (Tensors are reference-counted: the clones share storage.)
    pub fn named_tensors(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = vec![("model.embed_tokens.weight".into(), self.embed_tokens.clone())];
        for (l, layer) in self.layers.iter().enumerate() {
            v.extend(layer.named().into_iter().map(|(n, t)| (format!("model.layers.{l}.{n}"), t)));
        }
        v.push(("model.norm.weight".into(), self.norm.clone()));
        if let Some(h) = &self.lm_head {
            v.push(("lm_head.weight".into(), h.clone()));
        }
        v
    }

    /// The tensors numbered `range` of the model's tensors in `expected_tensors` order (the layers'
    /// from `layers`, each layer read once and only when one of its tensors is in `range`), each
    /// checked against its expected name and shape and then given to `f(name, part, last)`: whole
    /// (`last` true), except tables kept in `layers`, given in blocks of rows ([`TABLE_PART_BYTES`]),
    /// `last` true on the last.
    pub fn each_tensor(
        &self,
        layers: &mut dyn LayerStore,
        range: std::ops::Range<usize>,
        f: &mut dyn FnMut(&str, &Tensor, bool) -> Result<()>,
    ) -> Result<()> {
        let expected = expected_tensors(&self.cfg);
        if layers.count() != self.cfg.num_hidden_layers {
            bail!(Config, "the model has {} layers, its config {}", layers.count(), self.cfg.num_hidden_layers);
        }
        let per_layer = Layer::count_named(&self.cfg);
        // The expected shape of tensor `name`, numbered `at`, if it is in `range`.
        let take = |name: &str, at: &mut usize| -> Result<Option<Vec<usize>>> {
            let i = *at;
            *at += 1;
            if !range.contains(&i) {
                return Ok(None);
            }
            match expected.get(i) {
                Some((e, shape)) if e == name => Ok(Some(shape.clone())),
                Some((e, _)) => bail!(Config, "tensor `{name}` is where the config's list has `{e}`"),
                None => bail!(Config, "tensor `{name}` is not in the config's list"),
            }
        };
        let whole =
            |name: &str, t: &Tensor, shape: Vec<usize>, f: &mut dyn FnMut(&str, &Tensor, bool) -> Result<()>| {
                if t.dims() != shape.as_slice() {
                    return Err(Error::Shape { name: name.to_string(), expected: shape, got: t.dims().to_vec() });
                }
                f(name, t, true)
            };
        let table = |layers: &mut dyn LayerStore,
                     table: Table,
                     resident: Option<&Tensor>,
                     shape: Vec<usize>,
                     f: &mut dyn FnMut(&str, &Tensor, bool) -> Result<()>| {
            let name = table.tensor_name(&self.cfg);
            match resident.filter(|_| !self.tables_in_store()) {
                Some(t) => whole(name, t, shape, f),
                None => {
                    let vocab = shape[0];
                    let rows = crate::model::tables::rows_per_block(TABLE_PART_BYTES, self.cfg.hidden_size, vocab);
                    crate::model::tables::each_block(layers, table, vocab, rows, &mut |v0, t| {
                        f(name, t, v0 + t.dims()[0] >= vocab)
                    })
                }
            }
        };
        let mut at = 0usize;
        if let Some(shape) = take("model.embed_tokens.weight", &mut at)? {
            table(layers, Table::Embedding, Some(&self.embed_tokens), shape, f)?;
        }
        for l in 0..layers.count() {
            if range.start >= at + per_layer || range.end <= at {
                at += per_layer;
                continue;
            }
            for (n, t) in layers.layer(l)?.named() {
                let name = format!("model.layers.{l}.{n}");
                if let Some(shape) = take(&name, &mut at)? {
                    whole(&name, &t, shape, f)?;
                }
            }
        }
        if let Some(shape) = take("model.norm.weight", &mut at)? {
            whole("model.norm.weight", &self.norm, shape, f)?;
        }
        if !self.cfg.tie_word_embeddings {
            if let Some(shape) = take("lm_head.weight", &mut at)? {
                table(layers, Table::Head, self.lm_head.as_ref(), shape, f)?;
            }
        }
        if at != expected.len() {
            bail!(Config, "the model holds {at} tensors, its config implies {}", expected.len());
        }
        Ok(())
    }

    /// Hidden states after the last layer, `[b·t, hidden]`, for ids laid out `[b, t]`.
    pub fn hidden(&self, ids: &[u32], b: usize, t: usize) -> Result<Tensor> {
        self.run_layers(ids, b, t, None)
    }

    /// [`Model::nll`], with the LM head read from `layers` by blocks of rows where it keeps the
    /// tables ([`crate::model::tables`]).
    pub fn nll_in(&self, layers: &mut dyn LayerStore, x: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        if self.tables_in_store() {
            crate::model::tables::nll_by_blocks(self, layers, x, targets)
        } else {
            self.nll(x, targets)
        }
    }

    /// Negative log-likelihood of each `targets[i]` given hidden row `i` of `x` (`[n, hidden]`).
    /// The LM head runs on a few rows at a time, so the full `[n, vocab]` logits never exist.
    pub fn nll(&self, x: &Tensor, targets: &[u32]) -> Result<Vec<f32>> {
        const ROWS: usize = 64;
        let n = targets.len();
        let mut out = Vec::with_capacity(n);
        for r0 in (0..n).step_by(ROWS) {
            let r = ROWS.min(n - r0);
            let logits = self.head(&x.narrow(0, r0, r)?)?;
            let v = self.cfg.vocab_size;
            crate::kernels::with_slice(&logits, |l| {
                for (row, &tgt) in l.chunks_exact(v).zip(&targets[r0..r0 + r]) {
                    let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                    let sum: f64 = row.iter().map(|&z| (z - m).exp() as f64).sum();
                    out.push((sum.ln() as f32 + m) - row[tgt as usize]);
                }
            })?;
        }
        Ok(out)
    }
}
