/**
 * A structured logger, shape-compatible with pino (`logger.info(obj, msg)`), so a pino instance can
 * be passed as is. Busbar redacts credentials before it calls the logger.
 */
export interface Logger {
  debug(obj: object, msg?: string): void;
  info(obj: object, msg?: string): void;
  warn(obj: object, msg?: string): void;
  error(obj: object, msg?: string): void;
}

/** A logger that drops everything (the default). */
export const silentLogger: Logger = {
  debug() {},
  info() {},
  warn() {},
  error() {},
};

// scheme://user:password@host → scheme://user:***@host. The user may hold an unencoded `@` (lazy),
// and so may the password (greedy, up to the last `@` before the host's `/` or the end): in
// `amqp://user:p@ss@host` all of `p@ss` goes.
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)([^:/\s]*?):([^/\s]*)@(?=[^@/\s]*(?:[/\s]|$))/gi;
// ?password=… query parameters.
const QUERY_SECRET = /([?&](?:password|pass|pwd|secret|token|sasl_password)=)[^&\s]*/gi;
// password=…, password: …, "password":"…" outside a URL (connection strings, JSON, YAML, env lines).
const KEY_SECRET = /\b((?:password|passwd|pwd|secret|token|sasl[._]?password)["']?\s*[:=]\s*["']?)[^"'\s&,;})]+/gi;

/**
 * Removes credentials from a string: the password of every `scheme://user:pass@host` URL (also
 * one holding an unencoded `@`), `password=` / `token=` query parameters, and `password=…` /
 * `password: …` / `"password":"…"` (and `secret`, `token`, `pwd`) outside a URL. Used on every error
 * message and log line Busbar writes.
 */
export function redact(text: string): string {
  return text.replace(URL_CREDENTIALS, '$1$2:***@').replace(QUERY_SECRET, '$1***').replace(KEY_SECRET, '$1***');
}

/** Deeply redacts the string values of a log object (depth-limited, cycle-safe). */
export function redactObject(value: unknown, depth = 0, seen = new WeakSet<object>()): unknown {
  if (typeof value === 'string') return redact(value);
  if (value instanceof Error) return { name: value.name, message: redact(value.message) };
  if (typeof value !== 'object' || value === null || depth > 4) return value;
  if (seen.has(value)) return '[circular]';
  seen.add(value);
  if (Array.isArray(value)) return value.map((v) => redactObject(v, depth + 1, seen));
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value)) {
    out[k] = /password|secret|token/i.test(k) ? '***' : redactObject(v, depth + 1, seen);
  }
  return out;
}

/** Wraps a logger so every object and message it receives is redacted first. */
export function redactingLogger(inner: Logger): Logger {
  const wrap =
    (level: keyof Logger) =>
    (obj: object, msg?: string): void => {
      inner[level](redactObject(obj) as object, msg === undefined ? undefined : redact(msg));
    };
  return { debug: wrap('debug'), info: wrap('info'), warn: wrap('warn'), error: wrap('error') };
}
