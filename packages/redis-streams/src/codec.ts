/**
 * How a message is laid out in a stream entry: one field per header (name → value, UTF-8), then
 * the body as the binary-safe field `body`. A header whose name is `body` or starts with `\` is
 * stored with a leading `\` so it can never be mistaken for the body.
 */
import type { WireMessage } from '@busbar/core';

/** Name of the field holding the event data, byte-for-byte. */
export const BODY_FIELD = 'body';
const ESCAPE = '\\';

/** Flattens headers and body into `XADD` field/value arguments. */
export function encodeFields(headers: Readonly<Record<string, string>>, body: Uint8Array): (string | Buffer)[] {
  const out: (string | Buffer)[] = [];
  for (const [name, value] of Object.entries(headers)) {
    out.push(name === BODY_FIELD || name.startsWith(ESCAPE) ? `${ESCAPE}${name}` : name, value);
  }
  out.push(BODY_FIELD, Buffer.from(body.buffer, body.byteOffset, body.byteLength));
  return out;
}

/** Reads the flat field/value list of a stream entry (as Buffers) back into a message. */
export function decodeFields(fields: readonly Buffer[]): WireMessage {
  const headers: Record<string, string> = {};
  let body: Uint8Array = new Uint8Array(0);
  for (let i = 0; i + 1 < fields.length; i += 2) {
    const name = (fields[i] as Buffer).toString('utf8');
    const value = fields[i + 1] as Buffer;
    if (name === BODY_FIELD) {
      body = new Uint8Array(value.byteLength);
      body.set(value);
    } else {
      headers[name.startsWith(ESCAPE) ? name.slice(1) : name] = value.toString('utf8');
    }
  }
  return { headers, body };
}
