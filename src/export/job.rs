//! One pruning job as the CLI and the page both run it: the output format, the plan shown before
//! any work (parameters and file size), the files written (model, tokenizer, report, model card)
//! into any [`FileSink`] — a folder on disk, or a zip streamed to the browser.

use crate::error::{bail, Result};
use crate::export::gguf::{write_gguf, GgufDtype};
use crate::export::hf::{hf_side_files, write_weights, SHARD_BYTES};
use crate::formats::source::StorageDtype;
use crate::formats::zip::FileSink;
use crate::model::config::ModelConfig;
use crate::model::load::Bundle;
use crate::model::store::LayerStore;
use crate::model::transformer::{expected_tensors, Model};
use crate::prune::{heads_target, ids_sha256, mlp_target, PruneOptions, Pruned};
use serde_json::{json, Value};

/// What the pruned model is written as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// A Hugging Face folder with `model.safetensors` in this dtype (shards past 2 GB).
    Hf(StorageDtype),
    /// One `model.gguf` for llama.cpp.
    Gguf(GgufDtype),
}

impl OutputFormat {
    /// From the CLI's `--format` and `--dtype` (hf: f32, f16, bf16; gguf: f32, f16, q8_0).
    pub fn parse(format: &str, dtype: &str) -> Result<Self> {
        Ok(match (format, dtype) {
            ("hf", "f32") => OutputFormat::Hf(StorageDtype::F32),
            ("hf", "f16") => OutputFormat::Hf(StorageDtype::F16),
            ("hf", "bf16") => OutputFormat::Hf(StorageDtype::BF16),
            ("gguf", "f32") => OutputFormat::Gguf(GgufDtype::F32),
            ("gguf", "f16") => OutputFormat::Gguf(GgufDtype::F16),
            ("gguf", "q8_0") => OutputFormat::Gguf(GgufDtype::Q8_0),
            ("hf" | "gguf", d) => {
                bail!(Input, "dtype {d} does not fit format {format} (hf: f32, f16, bf16; gguf: f32, f16, q8_0)")
            }
            (f, _) => bail!(Input, "format must be hf or gguf, got {f}"),
        })
    }

    /// Bytes of tensor data the weights take in this format: the files' headers, a sharded folder's
    /// index and the small files are not counted (well under 1 MB for the models podar runs).
    pub fn weight_bytes(&self, cfg: &ModelConfig) -> u64 {
        expected_tensors(cfg)
            .iter()
            .map(|(_, shape)| {
                let n: u64 = shape.iter().map(|&d| d as u64).product();
                let row = shape.last().copied().unwrap_or(1);
                match self {
                    OutputFormat::Hf(d) => n * d.size() as u64,
                    OutputFormat::Gguf(_) if shape.len() < 2 => 4 * n,
                    OutputFormat::Gguf(GgufDtype::F32) => 4 * n,
                    OutputFormat::Gguf(GgufDtype::F16) => 2 * n,
                    OutputFormat::Gguf(GgufDtype::Q8_0) if row % 32 == 0 => n / 32 * 34,
                    OutputFormat::Gguf(GgufDtype::Q8_0) => 2 * n,
                }
            })
            .sum()
    }
}

/// The sizes a prune will produce, known before any computation (shown live in the page).
#[derive(Debug, Clone, serde::Serialize)]
pub struct Plan {
    pub parameters_before: u64,
    pub parameters_after: u64,
    pub layers_before: usize,
    pub layers_after: usize,
    pub intermediate_before: usize,
    pub intermediate_after: usize,
    pub kv_heads_before: usize,
    pub kv_heads_after: usize,
    /// Tensor data bytes of the output file(s) in the chosen format, headers and index not counted.
    pub bytes_after: u64,
    /// Calibration tokens the job needs (`calib_samples × calib_len`).
    pub calib_tokens: usize,
    /// What the output will not keep as asked (shown before the job runs).
    pub warnings: Vec<String>,
}

/// The configuration the pruned model will have, and its sizes.
pub fn plan(cfg: &ModelConfig, o: &PruneOptions, fmt: OutputFormat) -> Result<Plan> {
    if o.calibrates() {
        crate::prune::calib::check_len(cfg, o.calib_len)?;
    }
    let mut after = cfg.clone();
    after.intermediate_size = mlp_target(cfg.intermediate_size, o)?;
    if o.mlp_widths == crate::prune::Widths::PerLayer {
        // The widths are chosen during the job; whether the output format can hold them is known now.
        match fmt {
            OutputFormat::Gguf(_) => {
                crate::export::gguf::gguf_architecture(cfg.arch, true)?;
            }
            _ => bail!(
                Input,
                "per-layer MLP widths go out as a GGUF (llama.cpp's `deci` architecture): transformers' configs \
                 hold one intermediate_size; give --format gguf"
            ),
        }
    }
    crate::prune::check_recovery(o)?;
    let kv = heads_target(cfg.num_key_value_heads, o.heads)?;
    after.num_attention_heads = kv * (cfg.num_attention_heads / cfg.num_key_value_heads.max(1));
    after.num_key_value_heads = kv;
    let n = cfg.num_hidden_layers;
    let mut at: Option<Vec<usize>> = None;
    let dropped = match (&o.drop_layers, &o.drop_layers_at, o.drop_block) {
        (Some(k), None, None) => *k,
        (None, None, Some(k)) => k,
        (None, Some(_), None) => at.insert(crate::prune::layers_to_drop(n, o, &[], &[])?).len(),
        (None, None, None) => 0,
        _ => bail!(Input, "give only one of --drop-layers, --drop-layers-at and --drop-block"),
    };
    if dropped >= n {
        bail!(Input, "cannot drop {dropped} of {n} layers: at least one must stay");
    }
    after.num_hidden_layers = n - dropped;
    match &at {
        // Given layers: the layout after is known, and a GGUF must be able to describe it.
        Some(at) => {
            after.layer_types =
                after.layer_types.iter().enumerate().filter(|(i, _)| !at.contains(i)).map(|(_, t)| *t).collect();
            if let OutputFormat::Gguf(_) = fmt {
                crate::export::gguf::swa_period(&after)?;
            }
        }
        None => after.layer_types.truncate(after.num_hidden_layers),
    }
    Ok(Plan {
        parameters_before: cfg.parameter_count(),
        parameters_after: after.parameter_count(),
        layers_before: n,
        layers_after: after.num_hidden_layers,
        intermediate_before: cfg.intermediate_size,
        intermediate_after: after.intermediate_size,
        kv_heads_before: cfg.num_key_value_heads,
        kv_heads_after: kv,
        bytes_after: fmt.weight_bytes(&after),
        calib_tokens: o.calib_samples.saturating_mul(o.calib_len),
        warnings: format_warnings(&after, fmt),
    })
}

/// What `fmt` cannot store of a model with config `c` as asked.
fn format_warnings(c: &ModelConfig, fmt: OutputFormat) -> Vec<String> {
    let mut w = Vec::new();
    if let OutputFormat::Gguf(d) = fmt {
        if d == GgufDtype::Q8_0 {
            let mut odd: Vec<usize> =
                expected_tensors(c).iter().filter(|(_, s)| s.len() == 2 && s[1] % 32 != 0).map(|(_, s)| s[1]).collect();
            odd.sort_unstable();
            odd.dedup();
            if !odd.is_empty() {
                let rows: Vec<String> = odd.iter().map(|r| r.to_string()).collect();
                w.push(format!(
                    "Q8_0 needs rows that are a multiple of 32: the matrices with rows of {} values are stored \
                     as F16 (a divisor of 32 keeps the MLP in Q8_0)",
                    rows.join(", ")
                ));
            }
        }
        if !c.arch.is_gemma() && c.layer_types.contains(&crate::model::config::LayerType::Sliding) {
            w.push(format!(
                "podar reads this family back from a GGUF with attention over the whole context (llama.cpp may \
                 too), not over the model's sliding window of {} tokens: outputs differ on inputs longer than it",
                c.sliding_window.unwrap_or(0)
            ));
        }
    }
    w
}

/// Perplexity of one evaluation text before and after pruning.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct EvalPair {
    pub name: String,
    pub before: f64,
    pub after: f64,
}

/// Everything the report and the model card say about a finished job.
pub struct Record<'a> {
    /// The source's file name as the user gave it.
    pub source_name: &'a str,
    pub source_sha256: Option<String>,
    /// The original's configuration.
    pub source: &'a ModelConfig,
    pub pruned: &'a Pruned,
    pub options: &'a PruneOptions,
    pub calib_ids: Option<&'a [u32]>,
    pub evals: &'a [EvalPair],
    pub seconds: Seconds,
}

/// Where a job's time went, in seconds. `prune` is calibration and recovery together (and static
/// scoring, without calibration); the stages a caller did not time are left out of the report.
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct Seconds {
    /// Reading the model (its tables and norm only, where its layers are read as they are used).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub load: Option<f64>,
    /// Scoring the evaluation texts on the original and on the pruned model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval: Option<f64>,
    /// Calibration's forward passes and statistics, layer by layer.
    pub calibration: f64,
    /// Choosing neurons and heads, re-fitting and slicing the layers ([`Pruned::recovery_seconds`]).
    pub recovery: f64,
    /// Writing the pruned model.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub write: Option<f64>,
    pub prune: f64,
    pub total: f64,
}

impl Seconds {
    /// A prune of `prune` seconds, `recovery` of them choosing and re-fitting.
    pub fn of_prune(prune: f64, recovery: f64) -> Self {
        Seconds { calibration: (prune - recovery).max(0.0), recovery, prune, total: prune, ..Default::default() }
    }
}

impl Record<'_> {
    /// `podar-report.json`.
    pub fn report(&self) -> Value {
        let o = self.options;
        json!({
            "podar_version": env!("CARGO_PKG_VERSION"),
            "source": self.source_name,
            "source_sha256": self.source_sha256,
            "method": {"mlp": o.mlp_fraction, "mlp_size": self.pruned.model.cfg.intermediate_size, "score": o.score,
                "recover": o.recover, "ridge": o.ridge, "correct": o.correct,
                "error_estimate": o.error_estimate, "divisor": o.divisor, "sequential": o.sequential,
                "calib_precision": o.calib_precision,
                "mlp_widths": o.mlp_widths, "mlp_sizes": self.pruned.model.cfg.mlp_widths(),
                "heads": o.heads, "drop_layers": o.drop_layers, "drop_layers_at": o.drop_layers_at,
                "drop_block": o.drop_block},
            "calibration": {"tokens": self.pruned.calib_tokens, "samples": o.calib_samples, "len": o.calib_len,
                "ids_sha256": self.calib_ids.map(ids_sha256)},
            "parameters_before": self.source.parameter_count(),
            "parameters_after": self.pruned.model.parameter_count(),
            "kept_layers": self.pruned.kept_layers,
            "kept_kv_heads": self.pruned.kept_heads,
            "layer_influence": self.pruned.layer_influence,
            "block_distances": self.pruned.block_distances,
            "kept_mlp_neurons": self.pruned.kept,
            "seconds": self.seconds,
            "kernels": crate::kernels::in_use(),
            "perplexity": self.evals,
        })
    }

    /// The model card, `README.md`.
    pub fn card(&self) -> String {
        let (a, b) = (self.source, &self.pruned.model.cfg);
        let evals: String = self
            .evals
            .iter()
            .map(|e| format!("- perplexity on `{}`: {:.3} → {:.3}\n", e.name, e.before, e.after))
            .collect();
        format!(
            "# Pruned with podar\n\nSource: `{}`. Layers {} → {}, KV heads {} → {}, MLP width {} → {} per layer \
             ({} scores{}), parameters {:.2}M → {:.2}M.\n\n{}\nSee `podar-report.json` for the kept layers, \
             heads, neurons and timings.\n",
            self.source_name,
            a.num_hidden_layers,
            b.num_hidden_layers,
            a.num_key_value_heads,
            b.num_key_value_heads,
            a.intermediate_size,
            b.intermediate_size,
            self.options.score,
            if self.options.recover { ", ridge recovery" } else { "" },
            a.parameter_count() as f64 / 1e6,
            b.parameter_count() as f64 / 1e6,
            evals
        )
    }
}

/// Writes the model files: `model.safetensors` (shards of 2 GB and their index past that) and the
/// tokenizer/config files, or `model.gguf`; the model's layers are read from `layers` as they are
/// written.
pub fn write_model(
    bundle: &Bundle,
    model: &Model,
    layers: &mut dyn LayerStore,
    fmt: OutputFormat,
    sink: &mut dyn FileSink,
) -> Result<()> {
    match fmt {
        OutputFormat::Hf(dtype) => {
            write_weights(model, layers, dtype, SHARD_BYTES, sink)?;
            let side = hf_side_files(model, bundle.tokenizer.as_ref(), bundle.generation_config.as_ref(), dtype)?;
            for (name, bytes) in side {
                sink.file(&name, &mut |w| Ok(w.write_all(&bytes)?))?;
            }
        }
        OutputFormat::Gguf(dtype) => {
            let meta = bundle.gguf_tokenizer_metadata()?;
            sink.file("model.gguf", &mut |w| write_gguf(model, layers, &meta, dtype, w))?;
        }
    }
    Ok(())
}

/// Writes the report and the model card.
pub fn write_record(record: &Record, sink: &mut dyn FileSink) -> Result<()> {
    let report = serde_json::to_vec_pretty(&record.report())?;
    sink.file("podar-report.json", &mut |w| Ok(w.write_all(&report)?))?;
    let card = record.card();
    sink.file("README.md", &mut |w| Ok(w.write_all(card.as_bytes())?))
}

/// SHA-256 of everything `r` yields, in hex (the report's `source_sha256`).
pub fn sha256_hex(r: &mut dyn std::io::Read) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = r.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(format!("{:x}", h.finalize()))
}

/// The page's export's file name: the source's (a GGUF's file name without `.gguf`, a folder's name as it
/// is: "Llama-3.2-1B" keeps its dots), then `-podar.zip` or `-podar.gguf`.
pub fn file_name(source_name: &str, format: &str) -> String {
    let lower = source_name.to_ascii_lowercase();
    let stem = [".gguf", ".safetensors"]
        .iter()
        .find(|ext| lower.ends_with(*ext))
        .map_or(source_name, |ext| &source_name[..source_name.len() - ext.len()]);
    let stem = if stem.is_empty() { "model" } else { stem };
    if format == "gguf" {
        format!("{stem}-podar.gguf")
    } else {
        format!("{stem}-podar.zip")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_keep_a_folder_s_dots_and_drop_a_file_s_extension() {
        assert_eq!(file_name("Llama-3.2-1B", "hf"), "Llama-3.2-1B-podar.zip");
        assert_eq!(file_name("SmolLM2-135M-Instruct.Q4_1.gguf", "gguf"), "SmolLM2-135M-Instruct.Q4_1-podar.gguf");
        assert_eq!(file_name("m.GGUF", "hf"), "m-podar.zip");
        assert_eq!(file_name("", "gguf"), "model-podar.gguf");
    }

    #[test]
    fn formats() {
        assert_eq!(OutputFormat::parse("gguf", "q8_0").unwrap(), OutputFormat::Gguf(GgufDtype::Q8_0));
        assert!(OutputFormat::parse("hf", "q8_0").unwrap_err().to_string().contains("does not fit"));
        assert!(OutputFormat::parse("onnx", "f32").unwrap_err().to_string().contains("hf or gguf"));
    }
}
