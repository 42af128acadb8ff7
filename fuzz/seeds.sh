#!/usr/bin/env bash
# Seed corpora for the fuzz targets, made from the test fixtures into fuzz/corpus/TARGET/ (ignored by
# git; libFuzzer adds what it finds there). Needs target/release/podar (`make build-native`).
set -euo pipefail
cd "$(dirname "$0")/.."
podar=./target/release/podar
fx=tests/fixtures/tiny
c=fuzz/corpus
mkdir -p $c/{gguf,gguf_tokenizer,safetensors,config,tokenizer_json,chat_template,zip,http}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# GGUF: the tiny Llama (with its tokenizer) exported by podar, in Q8_0 and F16, and the first 4 KiB
# of each (header and metadata only).
for d in q8_0 f16; do
  $podar prune $fx/llama --mlp-size 32 --format gguf --dtype $d --out "$tmp/$d" --force >/dev/null
  for t in gguf gguf_tokenizer; do
    cp "$tmp/$d/model.gguf" $c/$t/llama-$d.gguf
    head -c 4096 "$tmp/$d/model.gguf" > $c/$t/llama-$d-head.gguf
  done
done
for m in "$fx"/*/; do
  n=$(basename "$m")
  cp "$m/config.json" $c/config/$n.json
  [ -f "$m/model.safetensors" ] && head -c 65536 "$m/model.safetensors" > $c/safetensors/$n-head.safetensors
done
cp $fx/llama_sharded/model-00007-of-00007.safetensors $c/safetensors/shard.safetensors
cp $fx/llama/tokenizer.json $c/tokenizer_json/byte-level.json
# Chat templates of the kinds models ship: ChatML (SmolLM2, Qwen), Llama 3, Gemma; and a macro.
printf '%s' "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system
You are a helpful AI assistant<|im_end|>
' }}{% endif %}{{'<|im_start|>' + message['role'] + '
' + message['content'] + '<|im_end|>' + '
'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant
' }}{% endif %}" > $c/chat_template/chatml.jinja
printf '%s' "{{ bos_token }}{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>

' + message['content'] | trim + '<|eot_id|>' }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>

' }}{% endif %}" > $c/chat_template/llama3.jinja
printf '%s' "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '
' + message['content'] | trim + '<end_of_turn>
' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model
'}}{% endif %}" > $c/chat_template/gemma.jinja
printf '%s' "{% macro show(m, n) %}{% if n > 0 %}[{{ m.content }}]{{ show(m, n - 1) }}{% endif %}{% endmacro %}{% for m in messages %}{{ show(m, 3) }}{% endfor %}{{ raise_exception('done') if messages|length > 9 }}" > $c/chat_template/macro.jinja
# A zip of stored files, as the page's download is.
python3 - "$c/zip/stored.zip" "$fx/llama/config.json" "$fx/llama/tokenizer.json" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_STORED) as z:
    for f in sys.argv[2:]:
        z.write(f, "model/" + f.split("/")[-1])
PY
# The zip64 records the page's download has past 4 GiB (end record, locator, an offset in the
# directory entry's zip64 extra field), on a small archive.
python3 - "$c/zip/zip64.zip" <<'PY'
import struct, sys, zlib
name, data = b"model/config.json", b'{"model_type": "llama"}'
crc, n = zlib.crc32(data), len(data)
local = struct.pack("<IHHHHHIIIHH", 0x04034B50, 20, 0, 0, 0, 0x21, crc, n, n, len(name), 0) + name + data
extra = struct.pack("<HHQ", 1, 8, 0)
central = struct.pack("<IHHHHHHIIIHHHHHII", 0x02014B50, 45, 45, 0, 0, 0, 0x21, crc, n, n, len(name), len(extra),
                      0, 0, 0, 0, 0xFFFFFFFF) + name + extra
start, size = len(local), len(central)
end64 = struct.pack("<IQHHIIQQQQ", 0x06064B50, 44, 45, 45, 0, 0, 1, 1, size, start)
locator = struct.pack("<IIQI", 0x07064B50, 0, start + size, 1)
end = struct.pack("<IHHHHIIH", 0x06054B50, 0, 0, 1, 1, size, 0xFFFFFFFF, 0)
open(sys.argv[1], "wb").write(local + central + end64 + locator + end)
PY
printf 'GET /models/m.gguf HTTP/1.1\r\nHost: 127.0.0.1:8080\r\nRange: bytes=0-1023\r\nOrigin: http://localhost:3000\r\n\r\n' > $c/http/range.txt
printf 'GET /%%2e%%2e/index.html?x=1#y HTTP/1.0\r\nHost: [::1]:8080\r\n\r\n' > $c/http/traversal.txt
printf 'OPTIONS / HTTP/1.1\r\nHost: localhost\r\nRange: bytes=-5\r\n\r\n' > $c/http/options.txt
echo "seed corpora in $c: $(find $c -type f | wc -l) files"
