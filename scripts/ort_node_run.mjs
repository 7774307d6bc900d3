// Run an exported .onnx file in onnxruntime-node (the JavaScript binding of ONNX Runtime).
// stdin: {"model": "path.onnx", "input_ids": [[...], ...]}; stdout: {"dims": [...], "logits_b64": "..."}
// (logits as little-endian float32). Used by `pipeline check-tools` and the tests.
// Install once beside this file: ONNXRUNTIME_NODE_INSTALL=skip npm install --prefix scripts
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const ort = require("onnxruntime-node");

const chunks = [];
for await (const chunk of process.stdin) chunks.push(chunk);
const request = JSON.parse(Buffer.concat(chunks).toString("utf8"));
const rows = request.input_ids;
const ids = BigInt64Array.from(rows.flat().map((x) => BigInt(x)));
const session = await ort.InferenceSession.create(request.model, { intraOpNumThreads: 1 });
const outputs = await session.run({ input_ids: new ort.Tensor("int64", ids, [rows.length, rows[0].length]) });
const logits = outputs[session.outputNames[0]];
const bytes = Buffer.from(logits.data.buffer, logits.data.byteOffset, logits.data.byteLength);
process.stdout.write(JSON.stringify({ dims: logits.dims, logits_b64: bytes.toString("base64"),
                                      version: ort.env.versions?.node ?? null }));
