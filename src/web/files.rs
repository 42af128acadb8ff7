//! The page's model files: `File`s from the page (a folder's by their relative paths) as named
//! readers, and a model read from them, whole or streamed.

use super::{input_err, spill, BlobReader};
use crate::error::{Error, Result};
use crate::model::load::{self, Bundle, Picked};
use crate::model::LayerStore;
use wasm_bindgen::prelude::*;
use web_sys::File;

/// The `File`s of a JavaScript array, refusing anything else.
pub(super) fn files_of(files: &js_sys::Array) -> std::result::Result<Vec<File>, JsValue> {
    files.iter().map(|f| f.dyn_into::<File>().map_err(|_| input_err("expected File objects"))).collect()
}

/// A file's path within a dropped folder, else its name.
pub(super) fn name_of(f: &File) -> String {
    let rel = js_sys::Reflect::get(f, &JsValue::from_str("webkitRelativePath")).ok().and_then(|v| v.as_string());
    rel.filter(|r| !r.is_empty()).unwrap_or_else(|| f.name())
}

/// Each file as a named reader (a folder's files by their relative paths).
pub(super) fn named(files: &[File]) -> Result<Vec<(String, BlobReader)>> {
    files
        .iter()
        .map(|f| {
            let r = BlobReader::new(f.clone().into())
                .map_err(|_| Error::Input("FileReaderSync needs a Web Worker".into()))?;
            Ok((name_of(f), r))
        })
        .collect()
}

/// The page reads text with the model's tokenizer: a Hugging Face folder without `tokenizer.json`
/// is refused before any weight is read (a GGUF carries its tokenizer).
pub(super) fn page_can_use(p: &Picked) -> std::result::Result<(), JsValue> {
    match p {
        Picked::Hf { tokenizer_json: None, .. } => {
            Err(input_err("the folder has no tokenizer.json, which podar needs to read your text: add it to the files"))
        }
        _ => Ok(()),
    }
}

/// Reads the model out of `files`; `progress("load", layer, layers)`.
pub(super) fn read_model(files: &[File], progress: &mut dyn FnMut(usize, usize) -> bool) -> Result<Bundle> {
    let bundle = load::load_named(named(files)?, progress)?;
    bundle.tokenizer()?;
    Ok(bundle)
}

/// Opens the model in `files` with its layers and tables left in them, read as they are used;
/// pruned layers go to JavaScript arrays ([`spill::JsSpill`]).
pub(super) fn open_streamed(files: &[File]) -> Result<(Bundle, Box<dyn LayerStore>)> {
    let (bundle, layers) = load::stream_named(named(files)?, Box::<spill::JsSpill>::default())?;
    bundle.tokenizer()?;
    Ok((bundle, layers))
}
