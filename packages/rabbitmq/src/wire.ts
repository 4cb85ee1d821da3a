/**
 * The CloudEvents AMQP binding at the transport's edge.
 *
 * Core speaks the Kafka binding's names (`ce_<attr>` headers, `content-type`). On RabbitMQ we write
 * what the CloudEvents AMQP protocol binding asks for, so any binding-aware reader understands our
 * messages and we understand theirs:
 *
 * - every `ce_<attr>` header becomes the application property (AMQP 0-9-1 header)
 *   `cloudEvents_<attr>` — the prefix the binding prefers since v1.0.2;
 * - `content-type` (`datacontenttype`) becomes the AMQP `content_type` property;
 * - the CloudEvents `id` is also copied into the AMQP `message_id` property;
 * - user headers travel unchanged.
 *
 * On consume we accept `cloudEvents_<attr>` (preferred), the older `cloudEvents:<attr>`, and, last,
 * raw `ce_<attr>` headers written by Kafka-binding producers. Broker-owned headers (`x-death`,
 * `x-delivery-count`, `x-first-death-*`, `x-last-death-*`) are not handed to core.
 */
import { HeaderNames, RESERVED_HEADER_PREFIX } from '@busbar/core/transport';

/** Prefix of CloudEvents attributes in AMQP application properties (binding v1.0.2+). */
export const AMQP_CE_PREFIX = 'cloudEvents_';
/** Older prefix of the AMQP binding, accepted on consume. */
export const AMQP_CE_PREFIX_LEGACY = 'cloudEvents:';

const BROKER_HEADER = /^x-(death|delivery-count|first-death-|last-death-|received-from|opt-)/;

/** The AMQP form of a message's headers. */
export interface AmqpHeaders {
  /** Application properties (the 0-9-1 `headers` table). */
  readonly headers: Record<string, string>;
  /** The AMQP `content_type` property (`datacontenttype`). */
  readonly contentType: string | undefined;
  /** The AMQP `message_id` property (the CloudEvents `id`). */
  readonly messageId: string | undefined;
}

/**
 * `fn` memoised in a map of at most 256 entries (header names: a handful in practice; bounded all
 * the same, since names come off the wire).
 */
function boundedMemo(fn: (name: string) => string): (name: string) => string {
  const cache = new Map<string, string>();
  return (name) => {
    let mapped = cache.get(name);
    if (mapped === undefined) {
      mapped = fn(name);
      if (cache.size < 256) cache.set(name, mapped);
    }
    return mapped;
  };
}

/** `ce_<attr>` → `cloudEvents_<attr>`. */
const amqpName = boundedMemo((coreName) => AMQP_CE_PREFIX + coreName.slice(RESERVED_HEADER_PREFIX.length));

/** Maps core's headers (`ce_*`, `content-type`, user headers) to the AMQP binding. */
export function toAmqp(headers: Readonly<Record<string, string>>): AmqpHeaders {
  const out: Record<string, string> = {};
  let contentType: string | undefined;
  for (const k in headers) {
    if (!Object.hasOwn(headers, k)) continue;
    const v = headers[k] as string;
    if (k === HeaderNames.contentType) contentType = v;
    else if (k.startsWith(RESERVED_HEADER_PREFIX)) out[amqpName(k)] = v;
    else out[k] = v;
  }
  return { headers: out, contentType, messageId: headers[HeaderNames.id] };
}

/** Header tables kept for reuse by {@link PublishHeaderTables} (distinct sets of header names). */
const REUSED_TABLES = 4;

/**
 * {@link toAmqp} for the publish path, reusing the headers object.
 *
 * amqplib wraps the `headers` option of every publish in `Object.create(headers)`, so each table
 * becomes a prototype, and it is then enumerated through the prototype chain. For a fresh object
 * per message that costs V8 ~10 µs — more than encoding the table. A table reused for every
 * message with the same header names (all messages of an event type, normally) pays it once. This
 * is safe because amqplib encodes a message synchronously inside `publish` and keeps no reference
 * to the options afterwards: each table (and the result of {@link map}) is valid only until the
 * next call, and must be handed to amqplib before it.
 */
export class PublishHeaderTables {
  /** The AMQP `content_type` of the last {@link map}ped message. */
  contentType: string | undefined;
  /** The AMQP `message_id` of the last {@link map}ped message. */
  messageId: string | undefined;
  private readonly tables: { readonly names: readonly string[]; readonly table: Record<string, string> }[] = [];
  private readonly names: string[] = [];
  private readonly values: string[] = [];

  /** The application properties of `headers` (see {@link toAmqp}); sets {@link contentType} and {@link messageId}. */
  map(headers: Readonly<Record<string, string>>): Record<string, string> {
    const names = this.names;
    const values = this.values;
    let n = 0;
    let contentType: string | undefined;
    for (const k in headers) {
      if (!Object.hasOwn(headers, k)) continue;
      const v = headers[k] as string;
      if (k === HeaderNames.contentType) {
        contentType = v;
        continue;
      }
      names[n] = k.startsWith(RESERVED_HEADER_PREFIX) ? amqpName(k) : k;
      values[n] = v;
      n++;
    }
    this.contentType = contentType;
    this.messageId = headers[HeaderNames.id];
    const tables = this.tables;
    search: for (let t = 0; t < tables.length; t++) {
      const known = tables[t] as { readonly names: readonly string[]; readonly table: Record<string, string> };
      if (known.names.length !== n) continue;
      for (let i = 0; i < n; i++) if (known.names[i] !== names[i]) continue search;
      const table = known.table;
      for (let i = 0; i < n; i++) table[names[i] as string] = values[i] as string;
      return table;
    }
    const table: Record<string, string> = {};
    for (let i = 0; i < n; i++) table[names[i] as string] = values[i] as string;
    tables.unshift({ names: names.slice(0, n), table });
    if (tables.length > REUSED_TABLES) tables.pop();
    return table;
  }
}

/** A header value as a string, or `undefined` for values that have no string form (tables, arrays). */
function headerString(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return undefined;
}

/** `cloudEvents_<attr>` → `ce_<attr>`. */
const coreName = boundedMemo((amqpName) => RESERVED_HEADER_PREFIX + amqpName.slice(AMQP_CE_PREFIX.length));

/** Copies the entries of `from` whose key `into` does not have yet. */
function fill(into: Record<string, string>, from: Record<string, string> | undefined): void {
  if (from === undefined) return;
  for (const k in from) if (!Object.hasOwn(into, k)) into[k] = from[k] as string;
}

/**
 * Maps an AMQP message's headers and properties back to core's form. Where one attribute arrives
 * under several names, `cloudEvents_` wins over `cloudEvents:`, which wins over `ce_`, which wins
 * over a user header of the same name.
 */
export function fromAmqp(headers: Readonly<Record<string, unknown>> | undefined, contentType: unknown): Record<string, string> {
  // One pass; the binding's names (all of them, in the usual case) go straight into the result.
  const out: Record<string, string> = {};
  let legacy: Record<string, string> | undefined;
  let raw: Record<string, string> | undefined;
  let user: Record<string, string> | undefined;
  if (headers !== undefined && headers !== null) {
    for (const k in headers) {
      if (!Object.hasOwn(headers, k)) continue;
      const v = headerString(headers[k]);
      if (v === undefined) continue;
      if (k.startsWith(AMQP_CE_PREFIX)) out[coreName(k)] = v;
      else if (k.startsWith(AMQP_CE_PREFIX_LEGACY)) {
        legacy ??= {};
        legacy[RESERVED_HEADER_PREFIX + k.slice(AMQP_CE_PREFIX_LEGACY.length)] = v;
      } else if (k.startsWith(RESERVED_HEADER_PREFIX) || k === HeaderNames.contentType) {
        raw ??= {};
        raw[k] = v;
      } else if (!BROKER_HEADER.test(k)) {
        user ??= {};
        user[k] = v;
      }
    }
    fill(out, legacy);
    fill(out, raw);
    fill(out, user);
  }
  const ct = headerString(contentType);
  if (ct !== undefined) out[HeaderNames.contentType] = ct;
  return out;
}

/**
 * The `x-delivery-count` a quorum queue adds on redelivery: how many times it handed this copy out
 * before (0 when absent) — the delivery's `redeliveries`.
 */
export function deliveryCount(headers: Readonly<Record<string, unknown>> | undefined): number {
  const v = headers?.['x-delivery-count'];
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : Number.NaN;
  return Number.isInteger(n) && n > 0 ? n : 0;
}
