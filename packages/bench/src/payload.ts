import { randomUUID } from 'node:crypto';
/** The benchmark message: a sequence number, the scheduled send time, and padding to a fixed JSON size. */
export interface Payload {
  /** Sequence number within a run. */
  seq: number;
  /** Scheduled send time, `performance.now()` ms of this process (latency is measured against it). */
  t: number;
  /** Padding. */
  pad: string;
}

/** Builds payloads whose JSON is `bytes` long (±2 bytes, as the numbers vary in length). */
export function payloadFactory(bytes: number): (seq: number, t?: number) => Payload {
  const probe = JSON.stringify({ seq: 123456, t: 12345.678901234, pad: '' }).length;
  const pad = 'x'.repeat(Math.max(0, bytes - probe));
  return (seq, t = performance.now()) => ({ seq, t, pad });
}

/** A handler that reads the payload the way a real one would (touches a field). */
export function touch(p: Payload): number {
  return p.seq + p.pad.length;
}

/**
 * The ~9 CloudEvents attributes Busbar carries as broker headers, fresh per message (id and time
 * generated as Busbar does): the `raw+ce-headers` diagnostic sends them with the raw client, to
 * tell the cost of the wire format from the cost of Busbar's code.
 */
export function ceHeaders(): Record<string, string> {
  const id = randomUUID();
  return {
    ce_id: id,
    ce_source: 'urn:busbar:bench',
    ce_specversion: '1.0',
    ce_type: 'bench.message',
    ce_time: new Date().toISOString(),
    'content-type': 'application/json',
    ce_dataschema: 'urn:busbar:bench.message:v1',
    ce_eventversion: '1',
    ce_idempotencykey: id,
  };
}
