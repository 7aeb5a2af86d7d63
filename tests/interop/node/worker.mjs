// Process the task queue like a Node foreman worker: a BullMQ Worker reads job.data.taskId,
// fetches the task, PATCHes it `running`, then `completed` with its outputData (the legacy REST
// path, no lease).
//
// Prints "ready" once consuming, then one JSON line {"taskId", "jobId", "name", "data", "opts"}
// per job it completed; exits 0 after INTEROP_EXPECT jobs, or on SIGTERM.
import { Worker } from 'bullmq';

import { api, deadline, settings, wireOptions } from './foreman.mjs';

deadline(Number(process.env.INTEROP_TIMEOUT_MS || 60_000));

const config = await settings();
const expected = Number(process.env.INTEROP_EXPECT || 0);
let done = 0;

async function handle(job) {
  const { taskId } = job.data;
  const task = await api(config, 'GET', `/api/v1/tasks/${taskId}`);
  await api(config, 'PATCH', `/api/v1/tasks/${taskId}`, { status: 'running' });
  const outputData = { by: 'node', pid: process.pid, echo: task.inputData, jobId: job.id };
  await api(config, 'PATCH', `/api/v1/tasks/${taskId}`, { status: 'completed', outputData });
  return { taskId, jobId: job.id, name: job.name, data: job.data, opts: wireOptions(job.opts) };
}

const worker = new Worker(config.queueName, handle, {
  connection: config.connection,
  concurrency: Number(process.env.INTEROP_CONCURRENCY || 5),
});

let closing = null;
function stop(code) {
  closing ??= worker.close().then(() => process.exit(code));
  return closing;
}

worker.on('completed', (job, line) => {
  process.stdout.write(`${JSON.stringify(line)}\n`);
  done += 1;
  if (expected > 0 && done >= expected) stop(0);
});
worker.on('failed', (job, error) => {
  // A Node worker would let BullMQ retry; the test wants to see it, so it fails the script.
  console.error(`job ${job?.id} failed: ${error?.stack || error}`);
  stop(1);
});
worker.on('error', (error) => console.error(`worker error: ${error?.stack || error}`));
process.on('SIGTERM', () => stop(0));

await worker.waitUntilReady();
process.stdout.write('ready\n');
