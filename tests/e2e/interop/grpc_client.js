// A capture app's view of uplinkd from Node, the stock way: @grpc/grpc-js with
// @grpc/proto-loader reading proto/ at run time, a default channel on `unix://...`.
//
// usage: node grpc_client.js PROTO_DIR SOCKET FILE
// Checks health, enqueues FILE, follows Watch until the job ends; prints one JSON object.
'use strict';
const grpc = require('@grpc/grpc-js');
const loader = require('@grpc/proto-loader');

const [protoDir, socket, file] = process.argv.slice(2);
const defs = loader.loadSync(['uplink.proto', 'health.proto'], {
  includeDirs: [protoDir],
  keepCase: true,
  enums: String,
  longs: String,
  defaults: true,
  oneofs: true,
});
const pkg = grpc.loadPackageDefinition(defs);
const address = `unix://${socket}`;
const creds = grpc.credentials.createInsecure();
const health = new pkg.grpc.health.v1.Health(address, creds);
const uplink = new pkg.uplink.v1.Uplink(address, creds);
const deadline = (s) => ({ deadline: new Date(Date.now() + s * 1000) });
const call = (client, method, req) =>
  new Promise((resolve, reject) =>
    client[method](req, deadline(10), (err, reply) => (err ? reject(err) : resolve(reply))));

const TERMINAL = ['JOB_STATE_COMPLETED', 'JOB_STATE_FAILED', 'JOB_STATE_CANCELLED'];

async function main() {
  const status = {};
  for (const service of ['', 'uplink.v1.Uplink']) {
    const reply = await call(health, 'Check', { service });
    status[service || 'daemon'] = reply.status;
  }
  const { job_id } = await call(uplink, 'Enqueue', { path: file });
  const kinds = [];
  const final = await new Promise((resolve, reject) => {
    const stream = uplink.Watch({ job_id }, deadline(120));
    let done = false;
    stream.on('data', (ev) => {
      kinds.push(ev.kind);
      const job = ev.kind === 'snapshot' ? ev.snapshot : ev[ev.kind] && ev[ev.kind].job;
      const ended = ['completed', 'failed', 'cancelled'].includes(ev.kind) ||
        (ev.kind === 'snapshot' && TERMINAL.includes(job.state));
      if (ended && !done) {
        done = true;
        stream.cancel();
        resolve(job);
      }
    });
    stream.on('error', (e) => { if (!done) reject(e); });
    stream.on('end', () => { if (!done) reject(new Error('Watch ended before the job did')); });
  });
  console.log(JSON.stringify({
    health: status,
    job_id,
    events: kinds,
    state: final.state,
    server_sha256: final.server_sha256,
    error: final.error_code,
  }));
  health.close();
  uplink.close();
}

main().catch((e) => {
  console.error(`grpc_client.js: ${e.stack || e}`);
  process.exit(1);
});
