import sjson from 'secure-json-parse';
import type { EventDefinition, Upcasters } from './event.js';
import { Headers, JSON_CONTENT_TYPE, RESERVED_HEADER_PREFIX, SPEC_VERSION } from './headers.js';
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
  | { readonly kind: 'upcast-failed'; readonly detail: string };

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

const textDecoder = new TextDecoder('utf-8', { fatal: true });
const JSON_PARSE_OPTIONS = { protoAction: 'error', constructorAction: 'error' } as const;
const JSON_CONTENT = /^application\/(?:[\w.+-]+\+)?json(?:\s*;.*)?$/i;

/** `urn:busbar:<type>:v<version>` — the `dataschema` Busbar writes. */
export function dataSchemaUri(type: string, version: number): string {
  return `urn:busbar:${type}:v${version}`;
}

/**
 * Encodes data as UTF-8 JSON bytes. The bytes are a view into a shared pool (as `Buffer.from`
 * makes them, several times cheaper than a fresh `ArrayBuffer` for small payloads): read them
 * through the view (`byteOffset`, `byteLength`), not through `.buffer` alone.
 */
export function encodeJson(data: unknown): Uint8Array {
  const text: string | undefined = JSON.stringify(data);
  if (text === undefined) return new Uint8Array(0); // `undefined`, a function…: no JSON text at all
  const bytes = Buffer.from(text, 'utf8');
  return new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength);
}

/** Splits headers into user headers (everything not `ce_*` / `content-type`). */
export function userHeadersOf(headers: Readonly<Record<string, string>>): Record<string, string> {
  const out: Record<string, string> = Object.create(null);
  for (const k of Object.keys(headers)) {
    if (!k.startsWith(RESERVED_HEADER_PREFIX) && k !== Headers.contentType) out[k] = headers[k] as string;
  }
  return out;
}

/**
 * Whether secure-json-parse has anything to look for: its checks match a `__proto__` or
 * `constructor` key spelled out or with `\u` escapes (and it strips a leading BOM). Text with none
 * of these parses identically with plain `JSON.parse`, without its two regular-expression scans.
 */
function mayHoldForbiddenKeys(text: string): boolean {
  return text.charCodeAt(0) === 0xfeff || text.includes('\\u') || text.includes('__proto__') || text.includes('constructor');
}

function invalid(detail: string): DecodeResult<never> {
  return { ok: false, reason: { kind: 'invalid-envelope', detail } };
}

/** The attributes (string-valued only) and user headers of a message, gathered in one walk over its headers. */
class HeaderScan {
  bytes = 0;
  id: string | undefined;
  source: string | undefined;
  type: string | undefined;
  specversion: string | undefined;
  time: string | undefined;
  contentType: string | undefined;
  dataschema: string | undefined;
  eventVersion: string | undefined;
  idempotencyKey: string | undefined;
  partitionKey: string | undefined;
  traceparent: string | undefined;
  tracestate: string | undefined;
  readonly user: Record<string, string> = Object.create(null);

  constructor(h: Readonly<Record<string, string>>) {
    // Own enumerable string keys, as `Object.entries` has them (cheaper than for-in + `hasOwn`).
    const keys = Object.keys(h);
    for (let i = 0; i < keys.length; i++) {
      const k = keys[i] as string;
      const v = h[k] as unknown;
      const text = typeof v === 'string' ? v : undefined;
      this.bytes += k.length + (text === undefined ? 0 : text.length);
      if (k.startsWith(RESERVED_HEADER_PREFIX)) {
        if (text !== undefined) this.attribute(k, text);
      } else if (k === Headers.contentType) {
        this.contentType = text;
      } else {
        this.user[k] = v as string;
      }
    }
  }

  private attribute(k: string, v: string): void {
    switch (k) {
      case Headers.id:
        this.id = v;
        break;
      case Headers.source:
        this.source = v;
        break;
      case Headers.specversion:
        this.specversion = v;
        break;
      case Headers.type:
        this.type = v;
        break;
      case Headers.time:
        this.time = v;
        break;
      case Headers.dataschema:
        this.dataschema = v;
        break;
      case Headers.eventVersion:
        this.eventVersion = v;
        break;
      case Headers.idempotencyKey:
        this.idempotencyKey = v;
        break;
      case Headers.partitionKey:
        this.partitionKey = v;
        break;
      case Headers.traceparent:
        this.traceparent = v;
        break;
      case Headers.tracestate:
        this.tracestate = v;
        break;
    }
  }
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
  extraUpcasters: Upcasters = {},
): DecodeResult<unknown> {
  try {
    if (message.body.byteLength > limits.maxPayloadBytes) {
      return {
        ok: false,
        reason: { kind: 'payload-too-large', detail: `body of ${message.body.byteLength} bytes exceeds ${limits.maxPayloadBytes}` },
      };
    }
    const h = new HeaderScan(message.headers);
    if (h.bytes > limits.maxHeaderBytes) return invalid(`headers exceed ${limits.maxHeaderBytes} bytes`);
    const { id, type, specversion, source } = h;
    if (!id) return invalid(`missing attribute ${Headers.id}`);
    if (!source) return invalid(`missing attribute ${Headers.source}`);
    if (specversion !== SPEC_VERSION)
      return invalid(`${Headers.specversion} must be ${SPEC_VERSION}, got ${JSON.stringify(specversion ?? null)}`);
    if (!type) return invalid(`missing attribute ${Headers.type}`);
    if (type !== event.type) return invalid(`${Headers.type} is "${type.slice(0, 200)}", this subscription handles "${event.type}"`);
    const contentType = h.contentType ?? JSON_CONTENT_TYPE;
    if (contentType !== JSON_CONTENT_TYPE && !JSON_CONTENT.test(contentType)) {
      return invalid(`content-type "${contentType.slice(0, 100)}" is not JSON`);
    }
    const versionText = h.eventVersion ?? '1';
    const version = Number(versionText);
    if (!Number.isInteger(version) || version < 1)
      return invalid(`${Headers.eventVersion} "${versionText.slice(0, 50)}" is not an integer ≥ 1`);

    let text: string;
    try {
      text = textDecoder.decode(message.body);
    } catch {
      return { ok: false, reason: { kind: 'undecodable', detail: 'body is not valid UTF-8' } };
    }
    let data: unknown;
    try {
      data = mayHoldForbiddenKeys(text) ? sjson.parse(text, undefined, JSON_PARSE_OPTIONS) : JSON.parse(text);
    } catch (e) {
      const msg = e instanceof Error ? e.message : String(e);
      return { ok: false, reason: { kind: 'undecodable', detail: `body is not acceptable JSON: ${msg.slice(0, 200)}` } };
    }

    if (version > event.version) {
      return {
        ok: false,
        reason: { kind: 'unsupported-version', detail: `data version ${version} is newer than this consumer's ${event.version}` },
      };
    }
    for (let v = version; v < event.version; v++) {
      const up = extraUpcasters[v] ?? event.upcasters[v];
      if (!up) {
        return { ok: false, reason: { kind: 'unsupported-version', detail: `no upcaster from version ${v} to ${v + 1}` } };
      }
      try {
        data = up(data);
      } catch (e) {
        return {
          ok: false,
          reason: { kind: 'upcast-failed', detail: `upcaster ${v}→${v + 1} threw: ${e instanceof Error ? e.message : String(e)}` },
        };
      }
    }
    const parsed = event.schema.safeParse(data);
    if (!parsed.success) {
      const issues = parsed.error.issues
        .slice(0, 5)
        .map((i) => `${i.path.map(String).join('.') || '(root)'}: ${i.message}`)
        .join('; ');
      return { ok: false, reason: { kind: 'schema-invalid', detail: issues } };
    }
    const attributes: EnvelopeAttributes = {
      id,
      source,
      type,
      specversion,
      time: h.time ?? '',
      datacontenttype: contentType,
      dataschema: h.dataschema ?? dataSchemaUri(type, version),
      eventVersion: version,
      idempotencyKey: h.idempotencyKey ?? id,
      partitionKey: h.partitionKey,
      traceparent: h.traceparent,
      tracestate: h.tracestate,
    };
    return { ok: true, data: parsed.data, attributes, userHeaders: h.user };
  } catch (e) {
    // Defensive: decoding must never throw into a consumer loop.
    return { ok: false, reason: { kind: 'undecodable', detail: `decoder failed: ${e instanceof Error ? e.message : String(e)}` } };
  }
}
