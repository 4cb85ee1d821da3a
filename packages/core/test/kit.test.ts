// The transport kit of `@busbar/core/transport`: slot gate, tick coalescer, connection-state cell.
import { describe, expect, it } from 'vitest';
import {
  AuthenticationError,
  BrokerUnavailableError,
  ConnectionStateCell,
  SlotGate,
  TickCoalescer,
  type TransportEvent,
} from '../src/transport/index.js';

describe('SlotGate', () => {
  it('grants at most `limit` slots, and one holder per key', () => {
    const gate = new SlotGate(2);
    expect(gate.tryAcquire('a')).toBe(true);
    expect(gate.tryAcquire('a')).toBe(false); // key busy, a slot is free
    expect(gate.isBusy('a')).toBe(true);
    expect(gate.tryAcquire()).toBe(true);
    expect(gate.tryAcquire('b')).toBe(false); // no slot
    expect(gate.inFlight).toBe(2);
    gate.release('a');
    expect(gate.isBusy('a')).toBe(false);
    expect(gate.tryAcquire('b')).toBe(true);
    expect(() => new SlotGate(0)).toThrow(RangeError);
  });

  it('grants waiters in arrival order, skipping those whose key is busy', () => {
    const gate = new SlotGate(1);
    const granted: string[] = [];
    gate.tryAcquire('a');
    gate.enqueue({ key: 'a', done: (ok) => granted.push(`a2:${ok}`) });
    gate.enqueue({ key: 'b', done: (ok) => granted.push(`b:${ok}`) });
    gate.enqueue({ key: undefined, done: (ok) => granted.push(`none:${ok}`) });
    expect(gate.waiting).toBe(3);
    // The slot comes free but `a` stays busy: `b` goes first.
    gate.releaseSlot();
    expect(granted).toEqual(['b:true']);
    gate.release('b');
    expect(granted).toEqual(['b:true', 'none:true']); // `a` is still held without a slot
    gate.release();
    expect(granted).toHaveLength(2);
    gate.releaseKey('a');
    expect(granted).toEqual(['b:true', 'none:true', 'a2:true']);
    expect(gate.inFlight).toBe(1);
    expect(gate.waiting).toBe(0);
  });

  it('acquire resolves when a slot frees; cancel and cancelAll tell waiters false', async () => {
    const gate = new SlotGate(1);
    expect(await gate.acquire('k')).toBe(true);
    const second = gate.acquire('k');
    const third = gate.acquire('other');
    const w = { key: undefined, done: (ok: boolean) => results.push(ok) };
    const results: boolean[] = [];
    gate.enqueue(w);
    gate.cancel(w);
    gate.cancel(w); // unknown now: no-op
    expect(results).toEqual([false]);
    gate.release('k');
    expect(await second).toBe(true);
    gate.cancelAll();
    expect(await third).toBe(false);
    expect(gate.waiting).toBe(0);
  });
});

describe('TickCoalescer', () => {
  it('flushes the items of one turn in one call, and every add of the round shares its promise', async () => {
    const flushed: number[][] = [];
    const c = new TickCoalescer<number>(async (items) => {
      flushed.push(items);
    });
    const p1 = c.add(1);
    const p2 = c.add(2);
    expect(p1).toBe(p2);
    expect(c.pending).toBe(2);
    await p1;
    expect(flushed).toEqual([[1, 2]]);
    await c.add(3);
    expect(flushed).toEqual([[1, 2], [3]]);
  });

  it('rejects the round when the flush throws or rejects; the next round is independent', async () => {
    let fail: 'throw' | 'reject' | undefined = 'throw';
    const c = new TickCoalescer<string>(
      (items) => {
        if (fail === 'throw') throw new Error(`sync ${items.join()}`);
        if (fail === 'reject') return Promise.reject(new Error(`async ${items.join()}`));
      },
      { schedule: 'microtask' },
    );
    await expect(c.add('a')).rejects.toThrow('sync a');
    fail = 'reject';
    await expect(c.add('b')).rejects.toThrow('async b');
    fail = undefined;
    await expect(c.add('c')).resolves.toBeUndefined();
  });

  it('runs on the schedule asked for: next-tick before immediate', async () => {
    const order: string[] = [];
    const immediate = new TickCoalescer<string>((items) => void order.push(...items));
    const tick = new TickCoalescer<string>((items) => void order.push(...items), { schedule: 'next-tick' });
    const a = immediate.add('immediate');
    const b = tick.add('next-tick');
    await Promise.all([a, b]);
    expect(order).toEqual(['next-tick', 'immediate']);
    expect(() => new TickCoalescer(() => {}, { schedule: 'never' as never })).toThrow(RangeError);
  });
});

describe('ConnectionStateCell', () => {
  it('reports each change once, with since and the last error while not connected', () => {
    const events: TransportEvent[] = [];
    const changes: string[] = [];
    let now = 1000;
    const cell = new ConnectionStateCell({ now: () => now, onChange: (s, d) => changes.push(`${s}:${d ?? ''}`) });
    expect(cell.state).toBe('disconnected');
    expect(cell.health()).toEqual({ state: 'disconnected', since: 1000 });
    now = 1001;
    expect(cell.set('connecting')).toBe(true); // before attach: kept, not reported to core
    cell.attach({ emit: (e) => events.push(e) });
    expect(cell.set('connecting')).toBe(false);
    now = 1002;
    cell.set('connected');
    cell.fail('ECONNRESET');
    expect(cell.health()).toEqual({ state: 'connected', since: 1002 });
    now = 1003;
    cell.set('reconnecting');
    const h = cell.health();
    expect(h).toMatchObject({ state: 'reconnecting', since: 1003, detail: 'ECONNRESET' });
    expect(h.cause).toBeInstanceOf(BrokerUnavailableError);
    expect(h.cause?.message).toBe('ECONNRESET');
    now = 1004;
    cell.set('reconnecting', 'ECONNREFUSED'); // detail updated, no second event, since unchanged
    expect(cell.detail).toBe('ECONNREFUSED');
    expect(cell.since).toBe(1003);
    cell.set('connected');
    expect(cell.health()).toEqual({ state: 'connected', since: 1004 });
    cell.set('closed');
    expect(events.map(({ cause: _cause, ...e }) => e)).toEqual([
      { kind: 'connection', state: 'connected' },
      { kind: 'connection', state: 'reconnecting', detail: 'ECONNRESET' },
      { kind: 'connection', state: 'connected' },
      { kind: 'connection', state: 'closed' },
    ]);
    expect(events[1]?.cause).toBeInstanceOf(BrokerUnavailableError);
    expect(changes).toEqual(['connecting:', 'connected:', 'reconnecting:ECONNRESET', 'connected:', 'closed:']);
  });

  it('keeps a BusError as the cause, and `failed` is final: only closed follows', () => {
    const events: TransportEvent[] = [];
    const cell = new ConnectionStateCell();
    cell.attach({ emit: (e) => events.push(e) });
    const refused = new BrokerUnavailableError('connect ECONNREFUSED 127.0.0.1:5999');
    cell.set('connecting', refused);
    expect(cell.cause).toBe(refused);
    const denied = new AuthenticationError('ACCESS_REFUSED for user guest');
    expect(cell.failed(denied)).toBe(true);
    expect(cell.health()).toMatchObject({ state: 'failed', cause: denied, detail: 'ACCESS_REFUSED for user guest' });
    expect(events.at(-1)).toEqual({ kind: 'connection', state: 'failed', detail: denied.message, cause: denied });
    // A reconnect loop that did not check the state changes nothing.
    expect(cell.set('reconnecting', 'ECONNRESET')).toBe(false);
    cell.fail('ECONNRESET');
    expect(cell.failed(new AuthenticationError('other'))).toBe(false);
    expect(cell.health()).toMatchObject({ state: 'failed', cause: denied });
    expect(cell.set('closed')).toBe(true);
    expect(cell.state).toBe('closed');
    expect(cell.failed(denied)).toBe(false);
    expect(events.map((e) => e.state)).toEqual(['connecting', 'failed', 'closed']);
  });
});
