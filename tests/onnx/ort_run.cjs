// Runs an ONNX model in onnxruntime-node (the reference for Lathe's importer and exporter).
//   node ort_run.cjs MODEL.onnx INPUT.f32 N,C,H,W OUTPUT.f32
// INPUT.f32 holds the first graph input as raw little-endian float32; OUTPUT.f32 receives the
// first graph output the same way. onnxruntime-node is found through NODE_PATH or the
// node_modules of the repository root.
'use strict';
const fs = require('fs');
const ort = require('onnxruntime-node');

async function main() {
  const [model, inPath, shapeArg, outPath] = process.argv.slice(2);
  if (!outPath) throw new Error('usage: node ort_run.cjs MODEL.onnx INPUT.f32 N,C,H,W OUTPUT.f32');
  const dims = shapeArg.split(',').map(Number);
  const buf = fs.readFileSync(inPath);
  const data = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4);
  // Graph optimisations off: the reference should compute the model as written.
  const session = await ort.InferenceSession.create(model, { graphOptimizationLevel: 'disabled' });
  const feeds = { [session.inputNames[0]]: new ort.Tensor('float32', Float32Array.from(data), dims) };
  const result = await session.run(feeds);
  const out = result[session.outputNames[0]];
  fs.writeFileSync(outPath, Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength));
  console.log(JSON.stringify({ output: session.outputNames[0], dims: out.dims }));
}
main().catch((e) => { console.error(String(e && e.stack || e)); process.exit(1); });
