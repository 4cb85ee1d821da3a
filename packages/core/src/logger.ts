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

// scheme://user:password@host  → scheme://user:***@host ; also ?password=… query parameters.
const URL_CREDENTIALS = /([a-z][a-z0-9+.-]*:\/\/)([^:@/\s]*):([^@/\s]*)@/gi;
const QUERY_SECRET = /([?&](?:password|pass|pwd|secret|token|sasl_password)=)[^&\s]*/gi;

/**
 * Removes credentials from a string: the password of every `scheme://user:pass@host` URL and
 * `password=` / `token=` query parameters. Used on every error message and log line Busbar writes.
 */
export function redact(text: string): string {
  return text.replace(URL_CREDENTIALS, '$1$2:***@').replace(QUERY_SECRET, '$1***');
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
