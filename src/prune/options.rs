//! What to prune and how: the options of a job, and the widths they leave (checked before any work).

use super::calib;
use super::Score;
use crate::error::{bail, Result};

/// What to prune and how.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct PruneOptions {
    /// Fraction of MLP neurons to remove (0..1), or
    pub mlp_fraction: Option<f64>,
    /// the MLP width to keep.
    pub mlp_size: Option<usize>,
    /// Round the kept width down to a multiple of this.
    pub divisor: Option<usize>,
    pub score: Score,
    /// Ridge re-fit of the down projections (needs calibration).
    pub recover: bool,
    /// Ridge strength relative to the mean diagonal of the Gram matrix (default 0.3, with `correct`
    /// 0.5: measured best of 0.1 / 0.3 × 0…1 on SmolLM2-135M with code calibration, and better on
    /// prose and German calibration too; see the README).
    pub ridge: f64,
    pub calib_samples: usize,
    pub calib_len: usize,
    /// Remove this many layers, the ones that change the residual stream least (1 − cos(in, out)).
    pub drop_layers: Option<usize>,
    /// Remove exactly these layers.
    pub drop_layers_at: Option<Vec<usize>>,
    /// Remove the contiguous block of this many layers whose input and output are closest in angle.
    pub drop_block: Option<usize>,
    /// Calibrate each layer on the outputs of the already-pruned layers before it.
    pub sequential: bool,
    /// Fraction of KV groups (each KV head with its query heads) to remove from every layer.
    pub heads: Option<f64>,
    /// Error correction in recovery (0 = off, 1 = full): each re-fitted down projection also steers
    /// its layer's output towards the unpruned model's, by this fraction of the difference the
    /// pruned stream carries. Needs sequential calibration.
    pub correct: f64,
    /// How error correction learns the error it steers against (see [`calib::ErrorEstimate`]).
    pub error_estimate: calib::ErrorEstimate,
    /// The number format of calibration's matrix products (see [`Precision`]).
    pub calib_precision: Precision,
    /// The same MLP width in every layer, or a width per layer chosen from calibration
    /// ([`crate::prune::widths`]) with the same total.
    pub mlp_widths: Widths,
}

/// How the MLP neurons to remove are spread over the layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Widths {
    /// Every layer keeps the same number (what transformers' configs can describe).
    #[default]
    Uniform,
    /// Each layer keeps as many as its neurons' measured output energy earns, relative to the layer
    /// (a GGUF of llama.cpp's `deci` architecture holds the result).
    PerLayer,
}

impl Widths {
    /// `uniform` or `per-layer`.
    pub fn parse(s: &str) -> Result<Widths> {
        match s {
            "uniform" => Ok(Widths::Uniform),
            "per-layer" => Ok(Widths::PerLayer),
            other => bail!(Input, "unknown MLP widths `{other}` (uniform, per-layer)"),
        }
    }
}

/// The number format of calibration's matrix products (the forward passes, the Gram matrices and
/// the cross products; the re-fits stay f32 and f64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    /// Both operands rounded to bf16 (to nearest even), their products summed in f32: where the
    /// CPU has bf16 dot products (x86-64 with AVX-512 BF16) at twice the f32 speed; elsewhere the
    /// same rounding before f32 products, so that every machine computes the same.
    Bf16,
}

impl Precision {
    /// `f32`, `bf16`, or `auto`: bf16 where the CPU's bf16 products ran faster when timed
    /// ([`crate::kernels::bf16_faster`]), else f32.
    pub fn parse(s: &str) -> Result<Precision> {
        match s {
            "auto" if crate::kernels::bf16_faster() => Ok(Precision::Bf16),
            "auto" | "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => bail!(Input, "unknown calibration precision `{other}` (auto, f32, bf16)"),
        }
    }
}

impl PruneOptions {
    /// Whether the job runs on calibration text: a data-driven score, recovery, head pruning or a
    /// choice of layers to drop by their influence.
    pub fn calibrates(&self) -> bool {
        self.score.needs_data()
            || self.recover
            || self.mlp_widths == Widths::PerLayer
            || self.heads.is_some()
            || self.drop_layers.is_some()
            || self.drop_block.is_some()
    }
}

impl Default for PruneOptions {
    fn default() -> Self {
        PruneOptions {
            mlp_fraction: None,
            mlp_size: None,
            divisor: None,
            score: Score::Energy,
            recover: true,
            ridge: 0.3,
            calib_samples: 64,
            calib_len: 128,
            drop_layers: None,
            drop_layers_at: None,
            drop_block: None,
            sequential: true,
            heads: None,
            correct: 0.5,
            error_estimate: calib::ErrorEstimate::Residuals,
            calib_precision: Precision::F32,
            mlp_widths: Widths::Uniform,
        }
    }
}

/// The width every layer keeps: from a fraction or a size, rounded down to the divisor, never larger
/// than the model's.
pub fn mlp_target(intermediate: usize, o: &PruneOptions) -> Result<usize> {
    let mut keep = match (o.mlp_fraction, o.mlp_size) {
        (Some(_), Some(_)) => bail!(Input, "give either --mlp or --mlp-size, not both"),
        (Some(f), None) if (0.0..1.0).contains(&f) => intermediate - (intermediate as f64 * f) as usize,
        (Some(f), None) => bail!(Input, "--mlp must be a fraction in [0, 1), got {f}"),
        (None, Some(n)) if n > 0 && n <= intermediate => n,
        (None, Some(n)) => bail!(Input, "--mlp-size must be between 1 and {intermediate}, got {n}"),
        (None, None) => intermediate,
    };
    if let Some(d) = o.divisor {
        if !matches!(d, 32 | 64 | 128 | 256) {
            bail!(Input, "--divisor must be 32, 64, 128 or 256, got {d}");
        }
        keep = keep / d * d;
        if keep == 0 {
            bail!(Input, "rounding the kept width down to a multiple of {d} leaves no neurons");
        }
    }
    Ok(keep)
}

/// Checks the recovery parameters: `ridge` a finite number ≥ 0, `correct` in [0, 1].
pub fn check_recovery(o: &PruneOptions) -> Result<()> {
    if !(o.ridge.is_finite() && o.ridge >= 0.0) {
        bail!(Input, "--ridge must be a number of at least 0, got {}", o.ridge);
    }
    if !(0.0..=1.0).contains(&o.correct) {
        bail!(Input, "--correct must be between 0 (off) and 1, got {}", o.correct);
    }
    Ok(())
}

/// KV groups every layer keeps: all, or all but ⌊groups · fraction⌋ (at least one stays).
pub fn heads_target(kv_heads: usize, fraction: Option<f64>) -> Result<usize> {
    match fraction {
        None => Ok(kv_heads),
        Some(f) if (0.0..1.0).contains(&f) => {
            let keep = kv_heads - (kv_heads as f64 * f) as usize;
            if keep == 0 {
                bail!(Input, "--heads {f} would remove all {kv_heads} KV heads");
            }
            if keep == kv_heads && f > 0.0 {
                bail!(
                    Input,
                    "--heads {f} removes none of the model's {kv_heads} KV groups (whole groups go, each {:.1}% of the \
                     heads): give at least {:.3}, or leave --heads out",
                    100.0 / kv_heads as f64,
                    1.0 / kv_heads as f64
                );
            }
            Ok(keep)
        }
        Some(f) => bail!(Input, "--heads must be a fraction in [0, 1), got {f}"),
    }
}
