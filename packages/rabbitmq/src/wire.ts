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
import { Headers, RESERVED_HEADER_PREFIX } from '@busbar/core';

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

/** Maps core's headers (`ce_*`, `content-type`, user headers) to the AMQP binding. */
export function toAmqp(headers: Readonly<Record<string, string>>): AmqpHeaders {
  const out: Record<string, string> = {};
  let contentType: string | undefined;
  for (const [k, v] of Object.entries(headers)) {
    if (k === Headers.contentType) contentType = v;
    else if (k.startsWith(RESERVED_HEADER_PREFIX)) out[AMQP_CE_PREFIX + k.slice(RESERVED_HEADER_PREFIX.length)] = v;
    else out[k] = v;
  }
  return { headers: out, contentType, messageId: headers[Headers.id] };
}

/** A header value as a string, or `undefined` for values that have no string form (tables, arrays). */
function headerString(value: unknown): string | undefined {
  if (typeof value === 'string') return value;
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') return String(value);
  if (Buffer.isBuffer(value)) return value.toString('utf8');
  return undefined;
}

/** Maps an AMQP message's headers and properties back to core's form. */
export function fromAmqp(headers: Readonly<Record<string, unknown>> | undefined, contentType: unknown): Record<string, string> {
  const user: Record<string, string> = {};
  const raw: Record<string, string> = {};
  const legacy: Record<string, string> = {};
  const binding: Record<string, string> = {};
  for (const [k, value] of Object.entries(headers ?? {})) {
    if (BROKER_HEADER.test(k)) continue;
    const v = headerString(value);
    if (v === undefined) continue;
    if (k.startsWith(AMQP_CE_PREFIX)) binding[RESERVED_HEADER_PREFIX + k.slice(AMQP_CE_PREFIX.length)] = v;
    else if (k.startsWith(AMQP_CE_PREFIX_LEGACY)) legacy[RESERVED_HEADER_PREFIX + k.slice(AMQP_CE_PREFIX_LEGACY.length)] = v;
    else if (k.startsWith(RESERVED_HEADER_PREFIX) || k === Headers.contentType) raw[k] = v;
    else user[k] = v;
  }
  const out: Record<string, string> = { ...user, ...raw, ...legacy, ...binding };
  const ct = headerString(contentType);
  if (ct !== undefined) out[Headers.contentType] = ct;
  return out;
}

/** The `x-delivery-count` a quorum queue adds on redelivery (0 when absent). */
export function deliveryCount(headers: Readonly<Record<string, unknown>> | undefined): number {
  const v = headers?.['x-delivery-count'];
  const n = typeof v === 'number' ? v : typeof v === 'string' ? Number(v) : Number.NaN;
  return Number.isInteger(n) && n > 0 ? n : 0;
}

/** The attempt carried in `ce_busbarattempt` (1 when absent or invalid). */
export function headerAttempt(headers: Readonly<Record<string, string>>): number {
  const n = Number(headers[Headers.attempt]);
  return Number.isInteger(n) && n >= 1 ? n : 1;
}
