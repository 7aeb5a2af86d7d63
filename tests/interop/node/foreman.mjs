// What the Node scripts share: settings as a Node foreman-client or worker finds them (the endpoint
// and key from the environment; the queue name and the Redis connection from the server's
// /api/v1/config, as the foreman-client reads them: the caller's organisation's own queue and, with
// FOREMAN_REDIS_ACL=per-org, its own Redis user), and the REST calls, each bounded by a timeout.

export async function settings() {
  const env = process.env;
  const missing = ['FOREMAN_ENDPOINT', 'FOREMAN_API_KEY'].filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new Error(`missing environment variables: ${missing.join(', ')}`);
  }
  const base = { endpoint: env.FOREMAN_ENDPOINT.replace(/\/+$/, ''), apiKey: env.FOREMAN_API_KEY };
  const config = await api(base, 'GET', '/api/v1/config');
  const { host, port, db, username, password } = config.redis;
  return {
    ...base,
    queueName: config.queues.taskQueue,
    connection: { host, port, db: db ?? 0, username, password, maxRetriesPerRequest: null },
  };
}

const REQUEST_TIMEOUT_MS = 10_000;

// One REST call with the fmn_ key; a non-2xx answer throws with the server's JSON error.
export async function api(config, method, path, body) {
  const response = await fetch(`${config.endpoint}${path}`, {
    method,
    headers: { authorization: `Bearer ${config.apiKey}`, 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body),
    signal: AbortSignal.timeout(REQUEST_TIMEOUT_MS),
  });
  const text = await response.text();
  if (!response.ok) {
    throw new Error(`${method} ${path} -> ${response.status}: ${text}`);
  }
  return JSON.parse(text);
}

// Exit non-zero if the script is still running after limitMs (the test bounds it too).
export function deadline(limitMs) {
  const timer = setTimeout(() => {
    console.error(`timed out after ${limitMs} ms`);
    process.exit(3);
  }, limitMs);
  timer.unref();
}

// The BullMQ options a job carries, as the Node library reads them back from Redis.
export function wireOptions(opts) {
  const keys = ['attempts', 'backoff', 'priority', 'delay', 'removeOnComplete', 'removeOnFail'];
  return Object.fromEntries(keys.filter((key) => opts[key] !== undefined).map((key) => [key, opts[key]]));
}
