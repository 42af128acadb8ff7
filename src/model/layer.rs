//! One transformer block's weights: the tensors a layer of a given config has (names and shapes,
//! in transformers' names and order), and a layer built from them or taken apart into them.

use crate::error::{Error, Result};
use crate::model::config::ModelConfig;
use candle_core::Tensor;

/// A linear map `y = x Wᵀ + b` with `W` stored `[out, in]` as in transformers.
#[derive(Debug, Clone)]
pub struct Linear {
    pub weight: Tensor,
    pub bias: Option<Tensor>,
}

impl Linear {
    /// `x` is `[n, in]`; returns `[n, out]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        crate::kernels::linear(x, &self.weight, self.bias.as_ref())
    }
}

/// One transformer block.
#[derive(Debug, Clone)]
pub struct Layer {
    pub input_layernorm: Tensor,
    pub post_attention_layernorm: Tensor,
    /// Gemma only.
    pub pre_feedforward_layernorm: Option<Tensor>,
    /// Gemma only.
    pub post_feedforward_layernorm: Option<Tensor>,
    pub q_proj: Linear,
    pub k_proj: Linear,
    pub v_proj: Linear,
    pub o_proj: Linear,
    pub q_norm: Option<Tensor>,
    pub k_norm: Option<Tensor>,
    pub gate_proj: Linear,
    pub up_proj: Linear,
    pub down_proj: Linear,
}

/// The tensors of layer `l` of a model shaped `cfg`, by their names within the layer, with their
/// shapes, in transformers' order (the order [`Layer::named`] gives them in).
pub fn layer_tensors(cfg: &ModelConfig, l: usize) -> Vec<(String, Vec<usize>)> {
    let (h, i, hd) = (cfg.hidden_size, cfg.mlp_width(l), cfg.head_dim);
    let (q, kv) = (cfg.num_attention_heads * hd, cfg.num_key_value_heads * hd);
    let mut v = Vec::new();
    let mut add = |n: &str, s: Vec<usize>| v.push((n.to_string(), s));
    add("input_layernorm.weight", vec![h]);
    add("self_attn.q_proj.weight", vec![q, h]);
    add("self_attn.k_proj.weight", vec![kv, h]);
    add("self_attn.v_proj.weight", vec![kv, h]);
    add("self_attn.o_proj.weight", vec![h, q]);
    if cfg.qkv_bias {
        add("self_attn.q_proj.bias", vec![q]);
        add("self_attn.k_proj.bias", vec![kv]);
        add("self_attn.v_proj.bias", vec![kv]);
    }
    if cfg.o_bias {
        add("self_attn.o_proj.bias", vec![h]);
    }
    if cfg.arch.has_qk_norm() {
        add("self_attn.q_norm.weight", vec![hd]);
        add("self_attn.k_norm.weight", vec![hd]);
    }
    add("post_attention_layernorm.weight", vec![h]);
    if cfg.arch.is_gemma() {
        add("pre_feedforward_layernorm.weight", vec![h]);
        add("post_feedforward_layernorm.weight", vec![h]);
    }
    add("mlp.gate_proj.weight", vec![i, h]);
    add("mlp.up_proj.weight", vec![i, h]);
    add("mlp.down_proj.weight", vec![h, i]);
    v
}

impl Layer {
    /// Layer `l` of a model shaped `cfg`, each tensor from `get(name, shape)` (transformers' names),
    /// as [`layer_tensors`] lists them.
    pub fn read(cfg: &ModelConfig, l: usize, get: &mut dyn FnMut(&str, &[usize]) -> Result<Tensor>) -> Result<Layer> {
        let mut got = std::collections::HashMap::new();
        for (n, shape) in layer_tensors(cfg, l) {
            let t = get(&format!("model.layers.{l}.{n}"), &shape)?;
            got.insert(n, t);
        }
        Layer::from_named(&mut |n| got.remove(n))
    }

    /// The layer whose weights `take(name)` gives by [`Layer::named`]'s names, shaped as they are;
    /// the optional ones (biases, Gemma's and Qwen3's extra norms) where given.
    pub fn from_named(take: &mut dyn FnMut(&str) -> Option<Tensor>) -> Result<Layer> {
        let mut need = |n: &str| take(n).ok_or_else(|| Error::MissingTensor(n.to_string()));
        let input_layernorm = need("input_layernorm.weight")?;
        let post_attention_layernorm = need("post_attention_layernorm.weight")?;
        let q = need("self_attn.q_proj.weight")?;
        let k = need("self_attn.k_proj.weight")?;
        let v = need("self_attn.v_proj.weight")?;
        let o = need("self_attn.o_proj.weight")?;
        let gate = need("mlp.gate_proj.weight")?;
        let up = need("mlp.up_proj.weight")?;
        let down = need("mlp.down_proj.weight")?;
        let lin = |weight: Tensor, bias: Option<Tensor>| Linear { weight, bias };
        Ok(Layer {
            input_layernorm,
            post_attention_layernorm,
            pre_feedforward_layernorm: take("pre_feedforward_layernorm.weight"),
            post_feedforward_layernorm: take("post_feedforward_layernorm.weight"),
            q_proj: lin(q, take("self_attn.q_proj.bias")),
            k_proj: lin(k, take("self_attn.k_proj.bias")),
            v_proj: lin(v, take("self_attn.v_proj.bias")),
            o_proj: lin(o, take("self_attn.o_proj.bias")),
            q_norm: take("self_attn.q_norm.weight"),
            k_norm: take("self_attn.k_norm.weight"),
            gate_proj: lin(gate, None),
            up_proj: lin(up, None),
            down_proj: lin(down, None),
        })
    }

    /// The number of tensors [`Layer::named`] gives for a layer of a model shaped `cfg`.
    pub fn count_named(cfg: &ModelConfig) -> usize {
        layer_tensors(cfg, 0).len()
    }

    /// Every weight of the layer by its name within the layer (`self_attn.q_proj.weight`…), in
    /// `expected_tensors` order. (Clones share storage.)
    pub fn named(&self) -> Vec<(String, Tensor)> {
        let mut v: Vec<(String, Tensor)> = Vec::new();
        let mut add = |n: &str, t: &Tensor| v.push((n.to_string(), t.clone()));
        add("input_layernorm.weight", &self.input_layernorm);
        add("self_attn.q_proj.weight", &self.q_proj.weight);
        add("self_attn.k_proj.weight", &self.k_proj.weight);
        add("self_attn.v_proj.weight", &self.v_proj.weight);
        add("self_attn.o_proj.weight", &self.o_proj.weight);
        for (n, lin) in
            [("q_proj", &self.q_proj), ("k_proj", &self.k_proj), ("v_proj", &self.v_proj), ("o_proj", &self.o_proj)]
        {
            if let Some(b) = &lin.bias {
                add(&format!("self_attn.{n}.bias"), b);
            }
        }
        if let (Some(q), Some(k)) = (&self.q_norm, &self.k_norm) {
            add("self_attn.q_norm.weight", q);
            add("self_attn.k_norm.weight", k);
        }
        add("post_attention_layernorm.weight", &self.post_attention_layernorm);
        if let (Some(a), Some(b)) = (&self.pre_feedforward_layernorm, &self.post_feedforward_layernorm) {
            add("pre_feedforward_layernorm.weight", a);
            add("post_feedforward_layernorm.weight", b);
        }
        add("mlp.gate_proj.weight", &self.gate_proj.weight);
        add("mlp.up_proj.weight", &self.up_proj.weight);
        add("mlp.down_proj.weight", &self.down_proj.weight);
        v
    }
}
