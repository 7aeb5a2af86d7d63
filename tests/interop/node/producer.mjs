// Enqueue tasks the way the Node foreman-client does (SPEC section 7): create the task through the
// REST API (pending), add a BullMQ job named by its type with data exactly {taskId} and the
// client's options, then PATCH the task `queued` with the job's id.
//
// stdin: {"runId": str, "tasks": [{"type", "inputData", "maxRetries", "priority"?}]}
// stdout: one JSON line {"taskId", "jobId", "name", "data", "opts", "status"} per task.
import { Queue } from 'bullmq';

import { api, deadline, settings, wireOptions } from './foreman.mjs';

deadline(Number(process.env.INTEROP_TIMEOUT_MS || 60_000));

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  return JSON.parse(Buffer.concat(chunks).toString('utf8'));
}

const config = await settings();
const { runId, tasks } = await readStdin();
const queue = new Queue(config.queueName, { connection: config.connection });
try {
  for (const spec of tasks) {
    const task = await api(config, 'POST', '/api/v1/tasks', {
      runId,
      type: spec.type,
      inputData: spec.inputData,
      maxRetries: spec.maxRetries,
    });
    const options = {
      attempts: spec.maxRetries + 1,
      backoff: { type: 'exponential', delay: 2000 },
      removeOnComplete: true,
      removeOnFail: false,
    };
    if (spec.priority !== undefined) options.priority = spec.priority;
    const job = await queue.add(task.type, { taskId: task.id }, options);
    const queued = await api(config, 'PATCH', `/api/v1/tasks/${task.id}`, {
      status: 'queued',
      queueJobId: job.id,
    });
    const line = {
      taskId: task.id,
      jobId: job.id,
      name: job.name,
      data: job.data,
      opts: wireOptions(job.opts),
      status: queued.status,
    };
    process.stdout.write(`${JSON.stringify(line)}\n`);
  }
} finally {
  await queue.close();
}
