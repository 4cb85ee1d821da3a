/**
 * The wire codec: how a message is laid out in a stream entry. Two fields,
 *
 * 1. `_headers`: every header (CloudEvents attributes and user headers) as one JSON object of
 *    strings, e.g. `{"ce_id":"…","ce_type":"…","content-type":"application/json",…}`;
 * 2. `body`: the event data, byte-for-byte (binary-safe).
 *
 * One field for all headers rather than one field each: a message is 4 `XADD` field arguments instead
 * of ~20, which is most of the client CPU of a publish (ioredis assembles a command argument by
 * argument) and of a read (one reply buffer per field). `XRANGE` still shows a readable CloudEvent.
 * `_headers` cannot be the name of a header in the earlier layout (Busbar header names start with a
 * letter or a digit), which tells the two apart.
 *
 * Decoding also reads entries of the earlier layout — one field per header, then `body`; a header
 * named `body` or starting with `\` stored with a leading `\` — so entries written by an earlier
 * version (in a stream, a retry stream, a delayed set or a dead-letter stream) and producers that
 * write one field per header keep working.
 */
import { isUtf8 } from 'node:buffer';
import type { WireMessage } from '@busbar/core/transport';

/** Name of the field holding every header as one JSON object of strings. */
export const HEADERS_FIELD = '_headers';
/** Name of the field holding the event data, byte-for-byte. */
export const BODY_FIELD = 'body';
const ESCAPE = '\\';
const HEADERS_NAME = Buffer.from(HEADERS_FIELD);
const BODY_NAME = Buffer.from(BODY_FIELD);

/** Whether `name` holds exactly the bytes of `expected` (a loop over a few bytes: cheaper than a native `equals`). */
function isName(name: Buffer, expected: Buffer): boolean {
  const n = expected.length;
  if (name.length !== n) return false;
  for (let i = 0; i < n; i++) if (name[i] !== expected[i]) return false;
  return true;
}

/** Flattens headers and body into `XADD` field/value arguments: `_headers <json> body <data>`. */
export function encodeFields(headers: Readonly<Record<string, string>>, body: Uint8Array): (string | Buffer)[] {
  return [HEADERS_FIELD, encodeHeaders(headers), BODY_FIELD, encodeBody(body)];
}

/** @internal The value of the `_headers` field. */
export function encodeHeaders(headers: Readonly<Record<string, string>>): string {
  return JSON.stringify(headers);
}

/**
 * @internal The value of the `body` field as a command argument: a string when the body is valid
 * UTF-8 (the bytes on the wire are the same — valid UTF-8 decodes and re-encodes byte-for-byte — and
 * ioredis writes a command made of strings in one piece, where a `Buffer` argument makes it
 * assemble the command part by part), otherwise the bytes as a `Buffer`.
 */
export function encodeBody(body: Uint8Array): string | Buffer {
  const bytes = Buffer.from(body.buffer, body.byteOffset, body.byteLength);
  return isUtf8(bytes) ? bytes.toString('utf8') : bytes;
}

/** The JSON of a `_headers` field as headers, or `undefined` when it is not a JSON object of strings. */
function parseHeaders(value: Buffer): Record<string, string> | undefined {
  let parsed: unknown;
  try {
    parsed = JSON.parse(value.toString());
  } catch {
    return undefined;
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) return undefined;
  const headers = parsed as Record<string, unknown>;
  for (const name in headers) if (typeof headers[name] !== 'string') return undefined;
  return headers as Record<string, string>;
}

/**
 * @internal Copies bodies out of reply buffers (which the Redis parser may reuse, and which may be
 * slices of a much larger socket read). Small bodies are carved from chunks of its own rather than
 * each given a fresh `ArrayBuffer` (an allocation V8 tracks at a cost of microseconds); a chunk only
 * ever holds bodies copied by this copier (one subscription's messages) and lives as long as one of
 * them does. Bodies of one chunk share its `ArrayBuffer`: never transfer (detach) a body's buffer.
 */
export class BodyCopier {
  private chunk = new Uint8Array(0);
  private used = 0;

  constructor(
    private readonly chunkBytes = 32 * 1024,
    private readonly largestCarved = 4 * 1024,
  ) {}

  /** A copy of `value` no other copy overlaps. */
  copy(value: Uint8Array): Uint8Array {
    const n = value.byteLength;
    if (n > this.largestCarved) return copyOwn(value);
    if (this.used + n > this.chunk.byteLength) {
      this.chunk = new Uint8Array(this.chunkBytes);
      this.used = 0;
    }
    const out = this.chunk.subarray(this.used, this.used + n);
    out.set(value);
    this.used += n;
    return out;
  }
}

/** A copy of `value` in an `ArrayBuffer` of its own. */
function copyOwn(value: Uint8Array): Uint8Array {
  const out = new Uint8Array(value.byteLength);
  out.set(value);
  return out;
}

/**
 * Reads the flat field/value list of a stream entry (as Buffers) back into a message, in either
 * layout. A `_headers` field that is not a JSON object of strings is kept as a header of that name
 * (core then refuses the message for its missing attributes and dead-letters it). The body is a
 * copy (by `copier` when given, else in a buffer of its own). Never throws.
 */
export function decodeFields(fields: readonly Buffer[], copier?: BodyCopier): WireMessage {
  let headers: Record<string, string> | undefined;
  let body: Uint8Array | undefined;
  for (let i = 0; i + 1 < fields.length; i += 2) {
    // Field names compared as bytes: the two of the current layout need no string of their own.
    const nameBytes = fields[i] as Buffer;
    const value = fields[i + 1] as Buffer;
    if (isName(nameBytes, BODY_NAME)) {
      body = copier ? copier.copy(value) : copyOwn(value);
      continue;
    }
    const parsed = isName(nameBytes, HEADERS_NAME) ? parseHeaders(value) : undefined;
    if (parsed !== undefined && headers === undefined) {
      headers = parsed;
    } else if (parsed !== undefined) {
      for (const [k, v] of Object.entries(parsed)) headers = setHeader(headers, k, v);
    } else {
      const name = nameBytes.toString();
      headers = setHeader(headers, name.startsWith(ESCAPE) ? name.slice(1) : name, value.toString());
    }
  }
  return { headers: headers ?? {}, body: body ?? new Uint8Array(0) };
}

function setHeader(headers: Record<string, string> | undefined, name: string, value: string): Record<string, string> {
  const out = headers ?? {};
  out[name] = value;
  return out;
}
