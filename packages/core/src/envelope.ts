import { type DecodedMessage, decodeInto, NO_UPCASTERS, NO_USER_HEADERS } from './decode.js';
import type { EventDefinition, Upcasters } from './event.js';
import { HeaderNames, RESERVED_HEADER_PREFIX } from './headers.js';
import type { WireMessage } from './spi.js';

/**
 * Why a message went to the dead letters. A discriminated union on `kind`; `detail` is a
 * credential-free human-readable explanation naming the problem.
 */
export type DeadLetterReason =
  /** Every attempt of the retry policy failed. */
  | { readonly kind: 'max-attempts'; readonly detail: string }
  /** The handler threw `NonRetryableError`. */
  | { readonly kind: 'non-retryable'; readonly detail: string }
  /** The handler called `ctx.deadLetter(reason)`. */
  | { readonly kind: 'handler-requested'; readonly detail: string }
  /** The data does not satisfy the event schema (never retried). */
  | { readonly kind: 'schema-invalid'; readonly detail: string }
  /** The body is not valid JSON, or contains forbidden keys (`__proto__`, `constructor`). */
  | { readonly kind: 'undecodable'; readonly detail: string }
  /** Required CloudEvents attributes are missing or wrong (id, type, specversion, content type …). */
  | { readonly kind: 'invalid-envelope'; readonly detail: string }
  /** The body is larger than `maxPayloadBytes`. */
  | { readonly kind: 'payload-too-large'; readonly detail: string }
  /** The data's version is newer than this consumer knows, or no upcaster covers it. */
  | { readonly kind: 'unsupported-version'; readonly detail: string }
  /** An upcaster threw. */
  | { readonly kind: 'upcast-failed'; readonly detail: string }
  /**
   * The broker moved the message to the dead letters by itself, not core (RabbitMQ
   * `x-delivery-limit`: consumers crashed or lost their connection with it too often, so no
   * handler outcome was ever recorded). Only reported when reading dead letters back.
   */
  | { readonly kind: 'broker-dead-lettered'; readonly detail: string }
  /**
   * A dead letter whose reason header this version does not know (written by a newer version or
   * another tool), or that has none. `detail` quotes the stored reason. Only reported when reading
   * dead letters back.
   */
  | { readonly kind: 'unknown'; readonly detail: string };

/** The `kind`s of {@link DeadLetterReason}. */
export type DeadLetterReasonKind = DeadLetterReason['kind'];

/** The decoded CloudEvents attributes of a message. */
export interface EnvelopeAttributes {
  readonly id: string;
  readonly source: string;
  readonly type: string;
  readonly specversion: string;
  readonly time: string;
  readonly datacontenttype: string;
  readonly dataschema: string;
  /** Schema version of the data as published. */
  readonly eventVersion: number;
  readonly idempotencyKey: string;
  readonly partitionKey?: string | undefined;
  readonly traceparent?: string | undefined;
  readonly tracestate?: string | undefined;
}

/** Result of {@link decodeMessage}. */
export type DecodeResult<T> =
  | { readonly ok: true; readonly data: T; readonly attributes: EnvelopeAttributes; readonly userHeaders: Readonly<Record<string, string>> }
  | { readonly ok: false; readonly reason: DeadLetterReason };

/** Limits applied when decoding untrusted input. */
export interface DecodeLimits {
  /** Maximum body size in bytes. */
  readonly maxPayloadBytes: number;
  /** Maximum total size of all header keys and values, in bytes. */
  readonly maxHeaderBytes: number;
}

export { dataSchemaUri } from './decode.js';

/** Bytes of the pool {@link encodeJson} cuts bodies from. */
const BODY_POOL_BYTES = 64 * 1024;
/** Longest JSON text (in UTF-16 units) cut from the pool; a longer one gets a buffer of its own. */
const POOLED_TEXT_MAX = 4096;
// Zero-filled: the gaps between bodies never show earlier contents of the process heap.
let bodyPool = Buffer.alloc(BODY_POOL_BYTES);
let bodyPoolUsed = 0;

/**
 * Encodes data as UTF-8 JSON bytes. Small bodies are views into a shared 64 KiB pool (as
 * `Buffer.from` cuts them from Node's 8 KiB pool, several times cheaper than a fresh `ArrayBuffer`
 * each): read them through the view (`byteOffset`, `byteLength`), not through `.buffer` alone. A
 * pool is never written again where a body was cut, and is freed once no body into it is held.
 * The text is written in one pass (no separate UTF-8 length pass) into room for its worst case
 * (3 bytes per UTF-16 unit).
 */
export function encodeJson(data: unknown): Uint8Array {
  const text: string | undefined = JSON.stringify(data);
  if (text === undefined) return new Uint8Array(0); // `undefined`, a function…: no JSON text at all
  if (text.length > POOLED_TEXT_MAX) {
    const bytes = Buffer.from(text, 'utf8');
    return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  if (bodyPoolUsed + text.length * 3 > BODY_POOL_BYTES) {
    bodyPool = Buffer.alloc(BODY_POOL_BYTES);
    bodyPoolUsed = 0;
  }
  const start = bodyPoolUsed;
  const n = bodyPool.write(text, start, 'utf8');
  // Next body 8-byte aligned, as Node aligns its pool.
  bodyPoolUsed = (start + n + 7) & ~7;
  return new Uint8Array(bodyPool.buffer, bodyPool.byteOffset + start, n);
}

/** Splits headers into user headers (everything not `ce_*` / `content-type`). */
export function userHeadersOf(headers: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  for (const k of Object.keys(headers)) {
    if (!k.startsWith(RESERVED_HEADER_PREFIX) && k !== HeaderNames.contentType) out[k] = headers[k] as string;
  }
  return out;
}

/**
 * Decodes and validates an untrusted message for `event`: checks size limits, the CloudEvents
 * attributes, parses JSON refusing prototype-polluting keys, upcasts older versions and validates
 * against the schema. Never throws: every problem is a {@link DeadLetterReason}.
 */
export function decodeMessage<E extends EventDefinition>(
  message: WireMessage,
  event: E,
  limits: DecodeLimits,
  extraUpcasters: Upcasters = NO_UPCASTERS,
): DecodeResult<unknown> {
  // Not on the bus's delivery path (that one decodes into a reused object): a fresh one per call.
  const out: DecodedMessage = { data: undefined, id: '', idempotencyKey: '', userHeaders: NO_USER_HEADERS, attributes: undefined };
  const reason = decodeInto(message, event, limits, extraUpcasters, out, true);
  if (reason !== undefined) return { ok: false, reason };
  return { ok: true, data: out.data, attributes: out.attributes as EnvelopeAttributes, userHeaders: out.userHeaders };
}
