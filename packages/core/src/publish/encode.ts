/**
 * Encoding of a message to publish: validation against the event's schema, the JSON body, the
 * CloudEvents headers (id, time, type, dataschema …) and the user headers, with the size limits —
 * all before any I/O.
 */
import { randomFillSync } from 'node:crypto';
import { toStructured } from '../delivery/structured.js';
import { dataSchemaUri, encodeJson } from '../envelope.js';
import { PayloadTooLargeError, ValidationError } from '../errors.js';
import type { EventDefinition, EventInput } from '../event.js';
import { HeaderNames as Headers, JSON_CONTENT_TYPE, RESERVED_HEADER_PREFIX, SPEC_VERSION } from '../headers.js';
import { topicName } from '../naming.js';
import type { PublishOptions } from '../options.js';
import type { OutgoingMessage } from '../spi.js';

const HEADER_NAME = /^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$/;
const NO_OPTIONS: PublishOptions = Object.freeze({});

/** What a {@link MessageEncoder} writes into every message. */
export interface EncoderSettings {
  /** CloudEvents `source`. */
  readonly source: string;
  /** Prefix of every topic, if any (validated). */
  readonly namespace: string | undefined;
  /** Largest encoded body, bytes. */
  readonly maxPayloadBytes: number;
  /** Largest total size of headers, bytes (user headers get half of it). */
  readonly maxHeaderBytes: number;
  /** Write CloudEvents structured mode (`BusOptions.contentMode`). @defaultValue false */
  readonly structured?: boolean;
}

/** Encodes messages of a bus (one per bus: it caches per-event metadata). */
export class MessageEncoder {
  private readonly source: string;
  private readonly namespace: string | undefined;
  private readonly maxPayloadBytes: number;
  private readonly maxHeaderBytes: number;
  private readonly structured: boolean;
  /** Per event definition: its topic, `dataschema` and version header (computed once, not per publish). */
  private readonly eventMeta = new WeakMap<EventDefinition, EventMeta>();

  constructor(settings: EncoderSettings) {
    this.source = settings.source;
    this.namespace = settings.namespace;
    this.maxPayloadBytes = settings.maxPayloadBytes;
    this.maxHeaderBytes = settings.maxHeaderBytes;
    this.structured = settings.structured === true;
  }

  /** The broker-level name of an event's destination (namespace applied). */
  topicOf(event: EventDefinition): string {
    return topicName(this.namespace, event.type);
  }

  /** Builds the outgoing message without sending it (validation included). */
  encode<E extends EventDefinition>(event: E, data: EventInput<E>, options: PublishOptions = NO_OPTIONS): OutgoingMessage {
    const parsed = event.schema.safeParse(data);
    if (!parsed.success) {
      throw new ValidationError(
        `payload for "${event.type}" does not match its schema`,
        parsed.error.issues.map((i) => ({ path: i.path, message: i.message })),
      );
    }
    const body = encodeJson(parsed.data);
    if (body.byteLength > this.maxPayloadBytes) throw new PayloadTooLargeError(body.byteLength, this.maxPayloadBytes);
    const id = options.id ?? uuidV4();
    const user = options.headers;
    let userHeaders: Record<string, string> | undefined;
    if (user !== undefined) {
      userHeaders = {};
      let headerBytes = 0;
      for (const k of Object.keys(user)) {
        const v = user[k];
        if (!HEADER_NAME.test(k) || k.startsWith(RESERVED_HEADER_PREFIX) || k.toLowerCase() === Headers.contentType) {
          throw new ValidationError(`header name "${k.slice(0, 60)}" is invalid or reserved`);
        }
        if (typeof v !== 'string') throw new ValidationError(`header "${k}" must be a string`);
        headerBytes += k.length + v.length;
        userHeaders[k] = v;
      }
      if (headerBytes > this.maxHeaderBytes / 2) throw new ValidationError(`user headers exceed ${this.maxHeaderBytes / 2} bytes`);
    }
    if (options.key !== undefined && (typeof options.key !== 'string' || options.key.length === 0 || options.key.length > 1024)) {
      throw new ValidationError('key must be a non-empty string of at most 1024 characters');
    }
    const idempotencyKey = options.idempotencyKey ?? id;
    if (typeof idempotencyKey !== 'string' || idempotencyKey.length === 0 || idempotencyKey.length > 512) {
      throw new ValidationError('idempotencyKey must be a non-empty string of at most 512 characters');
    }
    const meta = this.metaOf(event);
    let headers: Record<string, string>;
    if (userHeaders === undefined) {
      // One literal (the `Headers` names spelled out): an object of exactly these 9 fields in one
      // allocation, where adding them one by one regrows its property store twice.
      headers = {
        ce_id: id,
        ce_source: this.source,
        ce_specversion: SPEC_VERSION,
        ce_type: event.type,
        ce_time: isoNow(),
        'content-type': JSON_CONTENT_TYPE,
        ce_dataschema: meta.dataschema,
        ce_eventversion: meta.version,
        ce_idempotencykey: idempotencyKey,
      };
    } else {
      headers = userHeaders;
      headers[Headers.id] = id;
      headers[Headers.source] = this.source;
      headers[Headers.specversion] = SPEC_VERSION;
      headers[Headers.type] = event.type;
      headers[Headers.time] = isoNow();
      headers[Headers.contentType] = JSON_CONTENT_TYPE;
      headers[Headers.dataschema] = meta.dataschema;
      headers[Headers.eventVersion] = meta.version;
      headers[Headers.idempotencyKey] = idempotencyKey;
    }
    if (options.key !== undefined) headers[Headers.partitionKey] = options.key;
    if (options.traceparent) headers[Headers.traceparent] = options.traceparent;
    if (options.tracestate) headers[Headers.tracestate] = options.tracestate;
    const message: OutgoingMessage = { topic: meta.topic, id, key: options.key, headers, body };
    return this.structured ? toStructured(message, this.maxPayloadBytes) : message;
  }

  /** Topic, `dataschema` and version header of `event`, computed on its first publish. */
  private metaOf(event: EventDefinition): EventMeta {
    let meta = this.eventMeta.get(event);
    if (meta === undefined || meta.type !== event.type || meta.versionNumber !== event.version) {
      meta = {
        type: event.type,
        versionNumber: event.version,
        topic: this.topicOf(event),
        dataschema: dataSchemaUri(event.type, event.version),
        version: String(event.version),
      };
      this.eventMeta.set(event, meta);
    }
    return meta;
  }
}

interface EventMeta {
  readonly type: string;
  readonly versionNumber: number;
  readonly topic: string;
  readonly dataschema: string;
  readonly version: string;
}

/** Random bytes for {@link uuidV4}, drawn from the CSPRNG 4 KiB at a time; each byte is used once. */
const uuidRandom = Buffer.alloc(4096);
let uuidRandomUsed = uuidRandom.length;
/** Where {@link uuidV4} formats an id (the dashes stay in place). */
const uuidText = Buffer.from('00000000-0000-4000-8000-000000000000', 'latin1');
const HEX_DIGITS = Buffer.from('0123456789abcdef', 'latin1');
/** Offsets in `uuidText` of the 16 bytes' first hex digit. */
const UUID_DIGIT_AT = [0, 2, 4, 6, 9, 11, 14, 16, 19, 21, 24, 26, 28, 30, 32, 34];

/**
 * A random (version 4) UUID, as `crypto.randomUUID()` makes it — 122 bits from the CSPRNG, in the
 * same lower-case form — but formatted in a reused buffer into one flat string: Node's builds it
 * from ~20 concatenated pieces (~600 bytes of garbage per id, as much as the rest of a header set).
 */
function uuidV4(): string {
  if (uuidRandomUsed + 16 > uuidRandom.length) {
    randomFillSync(uuidRandom);
    uuidRandomUsed = 0;
  }
  const r = uuidRandom;
  const o = uuidRandomUsed;
  uuidRandomUsed += 16;
  r[o + 6] = ((r[o + 6] as number) & 0x0f) | 0x40; // version 4
  r[o + 8] = ((r[o + 8] as number) & 0x3f) | 0x80; // RFC 4122 variant
  for (let i = 0; i < 16; i++) {
    const b = r[o + i] as number;
    const at = UUID_DIGIT_AT[i] as number;
    uuidText[at] = HEX_DIGITS[b >> 4] as number;
    uuidText[at + 1] = HEX_DIGITS[b & 0x0f] as number;
  }
  return uuidText.toString('latin1', 0, 36);
}

let isoMs = Number.NaN;
let isoText = '';

/** `new Date().toISOString()`, formatted once per millisecond (it costs more than the rest of a header set). */
function isoNow(): string {
  const ms = Date.now();
  if (ms !== isoMs) {
    isoMs = ms;
    isoText = new Date(ms).toISOString();
  }
  return isoText;
}
