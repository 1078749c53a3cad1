/**
 * Many aios nodes behind one OpenAI-compatible endpoint (issue 20; docs/fleets.md): a complete
 * nginx configuration (Debian's nginx-light) generated from a list of nodes by `aios fleet lb-config`.
 *
 * Why nginx and not HAProxy or runtime peers: the one behaviour that matters most for inference is
 * "a node that answers 429 (its queue is full) → the same request goes to another node", and of the
 * well-kept balancers in Debian only nginx can do it (`proxy_next_upstream http_429`, since 1.11.13);
 * Debian 12's HAProxy 2.6 refuses `retry-on 429` ("unknown keyword"). A balancer in front also keeps
 * the runtime single-node (no forwarding loops, no peer trust). What nginx (open source) does not do:
 * active health checks (`/health` probing is nginx Plus) and reading Retry-After: a node that refuses
 * or fails a connection, or answers 429/502/503/504, counts as a failure and is skipped for
 * `fail_timeout`, and the request is retried on the next node (at most `tries` nodes in all).
 */
export interface LbOptions {
  /** Where the balancer listens, host:port. */
  listen: string;
  /** The nodes' HTTP APIs (runtime.http_listen), host:port each. */
  nodes: string[];
  /** Directory for nginx's pid file, logs and temp files. */
  stateDir: string;
  /** The nodes speak HTTPS (a node's HTTP API beyond loopback does): verify them against this CA file (e.g. the fleet's shared runtime.pki ca.crt). */
  caFile?: string;
  /** How long a failed node is skipped (nginx fail_timeout). */
  failTimeout?: string;
  /** Most nodes one request is tried on. */
  tries?: number;
  /** The user nginx's workers run as. */
  user?: string;
}

const hostPort = (a: string) => /^(\d{1,3}(\.\d{1,3}){3}|\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}$/.test(a);

export function lbProblems(o: LbOptions): string[] {
  const out: string[] = [];
  if (!hostPort(o.listen)) out.push(`listen "${o.listen}" is not host:port`);
  if (!o.nodes.length) out.push('no nodes: name at least one node (host:port of its runtime.http_listen)');
  for (const n of o.nodes) if (!hostPort(n)) out.push(`node "${n}" is not host:port`);
  if (new Set(o.nodes).size !== o.nodes.length) out.push('a node is listed twice');
  if (o.failTimeout !== undefined && !/^\d+(ms|s|m)$/.test(o.failTimeout)) out.push(`fail timeout "${o.failTimeout}" is not a duration such as 10s`);
  if (o.tries !== undefined && (!Number.isInteger(o.tries) || o.tries < 1)) out.push(`tries ${o.tries} must be a whole number ≥ 1`);
  if (!o.stateDir.startsWith('/')) out.push(`state directory "${o.stateDir}" must be an absolute path`);
  return out;
}

/** The whole nginx.conf (`nginx -c <file>`). */
export function nginxConfig(o: LbOptions): string {
  const problems = lbProblems(o);
  if (problems.length) throw new Error(`lb-config: ${problems.join('; ')}`);
  const d = o.stateDir.replace(/\/$/, '');
  const tls = !!o.caFile;
  const host = o.listen.replace(/:\d+$/, '').replace(/^\[(.*)\]$/, '$1');
  const loopback = host === 'localhost' || host === '::1' || /^127\./.test(host);
  return [
    '# aios fleet lb-config: several aios-runtime nodes behind one OpenAI-compatible endpoint (docs/fleets.md).',
    `# Nodes: ${o.nodes.join(', ')}.`,
    ...(loopback ? [] : ['# It listens beyond loopback: requests pass to the nodes with their Authorization header, and the nodes check the keys;', '# put TLS in front (or use listen … ssl) before exposing it.']),
    `user ${o.user ?? 'www-data'};`,
    'worker_processes 1;',
    `pid ${d}/nginx.pid;`,
    `error_log ${d}/error.log warn;`,
    'events { worker_connections 1024; }',
    'http {',
    '  # Which nodes a request tried, and what each answered (e.g. "127.0.0.1:8081, 127.0.0.1:8082" "429, 200").',
    '  log_format aios \'$remote_addr "$request" $status upstream="$upstream_addr" "$upstream_status" $request_time\';',
    `  access_log ${d}/access.log aios;`,
    `  client_body_temp_path ${d}/body;`,
    `  proxy_temp_path ${d}/proxy;`,
    `  fastcgi_temp_path ${d}/fastcgi;`,
    `  uwsgi_temp_path ${d}/uwsgi;`,
    `  scgi_temp_path ${d}/scgi;`,
    '  client_max_body_size 16m;',
    '  upstream aios_nodes {',
    ...o.nodes.map((n) => `    server ${n} max_fails=1 fail_timeout=${o.failTimeout ?? '10s'};`),
    '  }',
    '  server {',
    `    listen ${o.listen};`,
    '    location / {',
    `      proxy_pass ${tls ? 'https' : 'http'}://aios_nodes;`,
    ...(tls ? [`      proxy_ssl_verify on;`, `      proxy_ssl_trusted_certificate ${o.caFile};`, '      proxy_ssl_server_name on;', '      proxy_ssl_name localhost;'] : []),
    '      proxy_http_version 1.1;',
    '      proxy_set_header Connection "";',
    '      # Token streams (SSE) go to the client as they come.',
    '      proxy_buffering off;',
    '      proxy_request_buffering on;',
    '      proxy_read_timeout 300s;',
    '      proxy_connect_timeout 2s;',
    '      # Another node when one refuses the connection, times out, or is busy (429) or unavailable (502/503/504);',
    '      # chat requests are POSTs: non_idempotent allows retrying them (nothing has reached the client yet then).',
    '      proxy_next_upstream error timeout http_429 http_502 http_503 http_504 non_idempotent;',
    `      proxy_next_upstream_tries ${o.tries ?? Math.min(3, o.nodes.length)};`,
    '    }',
    '  }',
    '}',
    '',
  ].join('\n');
}
