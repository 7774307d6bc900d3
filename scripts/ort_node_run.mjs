// Run an exported .onnx file in onnxruntime-node (the JavaScript binding of ONNX Runtime).
// stdin: {"model": "path.onnx", "feeds": {name: {"type": "int64"|"float32", "dims": [...], "data": base64}}}
//    or: {"model": "path.onnx", "input_ids": [[...], ...]}   (the full-forward graph only)
// stdout: {"dims": [...], "logits_b64": "..."}: the first output as little-endian float32.
// Used by `pipeline check-tools` and the tests. Install once beside this file:
//   ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix scripts
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const ort = require("onnxruntime-node");

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));

function tensor(spec) {
  const bytes = Buffer.from(spec.data, "base64");
  const buffer = bytes.buffer.slice(bytes.byteOffset, bytes.byteOffset + bytes.byteLength);
  const data = spec.type === "int64" ? new BigInt64Array(buffer) : new Float32Array(buffer);
  return new ort.Tensor(spec.type, data, spec.dims);
}

let feeds = {};
if (request.feeds) {
  for (const [name, spec] of Object.entries(request.feeds)) feeds[name] = tensor(spec);
} else {
  const rows = request.input_ids;
  const ids = BigInt64Array.from(rows.flat().map((x) => BigInt(x)));
  feeds = { input_ids: new ort.Tensor("int64", ids, [rows.length, rows[0].length]) };
}
const session = await ort.InferenceSession.create(request.model, { intraOpNumThreads: 1 });
const outputs = await session.run(feeds);
const logits = outputs[session.outputNames[0]];
const out = Buffer.from(logits.data.buffer, logits.data.byteOffset, logits.data.byteLength);
process.stdout.write(JSON.stringify({ dims: logits.dims, logits_b64: out.toString("base64") }));
