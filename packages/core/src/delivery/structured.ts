/**
 * CloudEvents **structured content mode** (JSON event format): the whole event — attributes and
 * data — is one JSON object in the body, marked by `content-type: application/cloudevents+json`
 * (Dapr publishes this way by default). Reading it for decode.ts, and writing it for a bus with
 * `contentMode: 'structured'`.
 *
 * Binary content mode (attributes in `ce_*` headers, the body is the data) stays Busbar's default
 * and the format of everything it wrote so far.
 */
import sjson from 'secure-json-parse';
import { PayloadTooLargeError } from '../errors.js';
import { HeaderNames, RESERVED_HEADER_PREFIX, STRUCTURED_CONTENT_TYPE } from '../headers.js';
import type { OutgoingMessage } from '../spi.js';

/** `application/cloudevents+json` with any parameters, any case. */
const STRUCTURED_JSON = /^\s*application\/cloudevents\+json\s*(?:;.*)?$/is;
/** Any other CloudEvents format or batch (`application/cloudevents-batch+json`, `+avro` …). */
const OTHER_CLOUDEVENTS = /^\s*application\/cloudevents[+-]/i;
/** Standard base64 (RFC 4648 §4), padded. */
const BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

const textDecoder = new TextDecoder('utf-8', { fatal: true });
const JSON_PARSE_OPTIONS = { protoAction: 'error', constructorAction: 'error' } as const;
const hasOwn = Object.prototype.hasOwnProperty;

/**
 * How a message's `content-type` marks its content mode: `'structured'` (JSON event format),
 * `'unsupported'` (another CloudEvents format, or batched mode) or `'binary'` (anything else).
 * Callers skip it for the usual `application/json`.
 */
export function contentModeOf(contentType: string): 'binary' | 'structured' | 'unsupported' {
  if (!OTHER_CLOUDEVENTS.test(contentType)) return 'binary';
  return STRUCTURED_JSON.test(contentType) ? 'structured' : 'unsupported';
}

/**
 * Whether secure-json-parse has anything to look for: its checks match a `__proto__` or
 * `constructor` key spelled out or with `\u` escapes (and it strips a leading BOM). Text with none
 * of these parses identically with plain `JSON.parse`, without its two regular-expression scans.
 */
export function mayHoldForbiddenKeys(text: string): boolean {
  return text.charCodeAt(0) === 0xfeff || text.includes('\\u') || text.includes('__proto__') || text.includes('constructor');
}

/** Parses untrusted JSON text, refusing prototype-polluting keys. Throws on bad input. */
export function parseUntrustedJson(text: string): unknown {
  return mayHoldForbiddenKeys(text) ? sjson.parse(text, undefined, JSON_PARSE_OPTIONS) : JSON.parse(text);
}

/** The attributes of a structured event, as strings (absent: `undefined`). */
export interface StructuredAttributes {
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
}

/** A structured event read from a body: its attributes and where its data is. */
export interface StructuredEvent {
  readonly attributes: StructuredAttributes;
  /**
   * `'value'`: `data` held the JSON value (in {@link value}); `'bytes'`: `data_base64` held bytes
   * (in {@link bytes}), to decode per `datacontenttype`; `'none'`: the event has no data.
   */
  readonly data: 'value' | 'bytes' | 'none';
  readonly value: unknown;
  readonly bytes: Uint8Array | undefined;
}

/** Core attributes: a JSON string or absent (`null` counts as absent). */
const STRING_ATTRIBUTES = ['id', 'source', 'type', 'specversion', 'time', 'datacontenttype', 'dataschema'] as const;
/** Extensions Busbar reads: a string, number or boolean (the JSON format's extension types). */
const EXTENSION_ATTRIBUTES = ['eventversion', 'idempotencykey', 'partitionkey', 'traceparent', 'tracestate'] as const;

/**
 * Reads the structured event in `body`. Returns it, or a credential-free explanation naming the
 * offending member when the body is not a valid JSON event envelope.
 */
export function readStructured(body: Uint8Array): StructuredEvent | string {
  let text: string;
  try {
    text = textDecoder.decode(body);
  } catch {
    return 'structured CloudEvent body is not valid UTF-8';
  }
  let envelope: unknown;
  try {
    envelope = parseUntrustedJson(text);
  } catch (e) {
    return `structured CloudEvent body is not acceptable JSON: ${(e instanceof Error ? e.message : String(e)).slice(0, 200)}`;
  }
  if (envelope === null || typeof envelope !== 'object' || Array.isArray(envelope)) {
    return 'structured CloudEvent body is not a JSON object';
  }
  const e = envelope as Record<string, unknown>;
  const found: Record<string, string | undefined> = {};
  for (const name of STRING_ATTRIBUTES) {
    const v = hasOwn.call(e, name) ? e[name] : undefined;
    if (v === undefined || v === null) continue;
    if (typeof v !== 'string') return `structured CloudEvent attribute "${name}" must be a string, got ${typeOf(v)}`;
    found[name] = v;
  }
  for (const name of EXTENSION_ATTRIBUTES) {
    const v = hasOwn.call(e, name) ? e[name] : undefined;
    if (v === undefined || v === null) continue;
    if (typeof v === 'string') found[name] = v;
    else if ((typeof v === 'number' && Number.isFinite(v)) || typeof v === 'boolean') found[name] = String(v);
    else return `structured CloudEvent attribute "${name}" must be a string, number or boolean, got ${typeOf(v)}`;
  }
  const attributes: StructuredAttributes = {
    id: found.id,
    source: found.source,
    type: found.type,
    specversion: found.specversion,
    time: found.time,
    contentType: found.datacontenttype,
    dataschema: found.dataschema,
    eventVersion: found.eventversion,
    idempotencyKey: found.idempotencykey,
    partitionKey: found.partitionkey,
    traceparent: found.traceparent,
    tracestate: found.tracestate,
  };
  const hasData = hasOwn.call(e, 'data') && e.data !== undefined;
  const base64 = hasOwn.call(e, 'data_base64') ? e.data_base64 : undefined;
  if (base64 !== undefined && base64 !== null) {
    if (hasData) return 'structured CloudEvent carries both "data" and "data_base64"';
    if (typeof base64 !== 'string') return `structured CloudEvent attribute "data_base64" must be a string, got ${typeOf(base64)}`;
    if (base64.length % 4 !== 0 || !BASE64.test(base64)) return 'structured CloudEvent attribute "data_base64" is not valid base64';
    const buf = Buffer.from(base64, 'base64');
    return { attributes, data: 'bytes', value: undefined, bytes: new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength) };
  }
  if (hasData) return { attributes, data: 'value', value: e.data, bytes: undefined };
  return { attributes, data: 'none', value: undefined, bytes: undefined };
}

/** The id of the structured event in `body`, if it has a readable one (for reports and holds). */
export function structuredId(body: Uint8Array): string | undefined {
  const event = readStructured(body);
  return typeof event === 'string' ? undefined : event.attributes.id;
}

function typeOf(v: unknown): string {
  return v === null ? 'null' : Array.isArray(v) ? 'an array' : typeof v;
}

/** `ce_<name>` headers that are Busbar's own delivery bookkeeping, never event attributes. */
const BUSBAR_PREFIX = `${RESERVED_HEADER_PREFIX}busbar`;

/**
 * The structured form of a binary message `message` (as the encoder made it): the body becomes the
 * JSON event envelope — every `ce_<attr>` header as member `<attr>`, `content-type` as
 * `datacontenttype`, the data as `data` — and `content-type` becomes {@link STRUCTURED_CONTENT_TYPE}.
 * The `ce_*` headers are kept as they are (the Kafka and AMQP bindings allow a structured message
 * to carry the binary-mode headers too): brokers and tools that route or look messages up by them
 * keep working, and a reader takes the attributes from the envelope. Throws
 * `PayloadTooLargeError` when the envelope is over `maxPayloadBytes`.
 */
export function toStructured(message: OutgoingMessage, maxPayloadBytes: number): OutgoingMessage {
  const envelope: Record<string, string> = {};
  const headers: Record<string, string> = {};
  for (const k of Object.keys(message.headers)) {
    const v = message.headers[k] as string;
    if (k === HeaderNames.contentType) {
      envelope.datacontenttype = v;
      continue;
    }
    if (k.startsWith(RESERVED_HEADER_PREFIX) && !k.startsWith(BUSBAR_PREFIX)) envelope[k.slice(RESERVED_HEADER_PREFIX.length)] = v;
    headers[k] = v;
  }
  headers[HeaderNames.contentType] = STRUCTURED_CONTENT_TYPE;
  const head = JSON.stringify(envelope);
  const body = message.body;
  // The body is the data's JSON text already: spliced in as `data`, not parsed and written again.
  const text =
    body.byteLength === 0
      ? head
      : `${head.slice(0, -1)},"data":${Buffer.from(body.buffer, body.byteOffset, body.byteLength).toString('utf8')}}`;
  const bytes = Buffer.from(text, 'utf8');
  if (bytes.byteLength > maxPayloadBytes) throw new PayloadTooLargeError(bytes.byteLength, maxPayloadBytes);
  return {
    topic: message.topic,
    id: message.id,
    key: message.key,
    headers,
    body: new Uint8Array(bytes.buffer, bytes.byteOffset, bytes.byteLength),
  };
}
