import { describe, expect, it } from 'vitest';
import {
  BusError,
  backoffDelay,
  CircuitBreaker,
  CircuitOpenError,
  type Clock,
  retry,
  seededRandom,
  settleAll,
  TimeoutError,
  ValidationError,
  withTimeout,
} from '../src/index.js';

function fakeClock(start = 1_000_000): Clock & { advance(ms: number): void } {
  let now = start;
  return {
    now: () => now,
    setTimer: () => () => {},
    advance(ms: number) {
      now += ms;
    },
  };
}

describe('backoffDelay', () => {
  it('grows exponentially up to the cap without jitter', () => {
    const o = { initialMs: 100, multiplier: 2, maxMs: 1000, minMs: 0, jitter: 'none' as const };
    expect([1, 2, 3, 4, 5, 6].map((n) => backoffDelay(n, o))).toEqual([100, 200, 400, 800, 1000, 1000]);
  });

  it('full jitter stays within [minMs, cap] and is reproducible with a seeded source', () => {
    const o = { initialMs: 100, multiplier: 2, maxMs: 1000, minMs: 10 };
    const a = seededRandom(7);
    const b = seededRandom(7);
    for (let n = 1; n <= 20; n++) {
      const d = backoffDelay(n, o, a);
      expect(d).toBeGreaterThanOrEqual(10);
      expect(d).toBeLessThanOrEqual(Math.min(1000, 100 * 2 ** (n - 1)));
      expect(backoffDelay(n, o, b)).toBe(d);
    }
  });

  it('spreads delays (jitter is not constant)', () => {
    const r = seededRandom(1);
    const values = new Set(Array.from({ length: 50 }, () => backoffDelay(5, { initialMs: 100, maxMs: 10_000 }, r)));
    expect(values.size).toBeGreaterThan(40);
  });
});

describe('withTimeout', () => {
  it('resolves with the value when in time', async () => {
    await expect(withTimeout(async () => 42, { ms: 1000 })).resolves.toBe(42);
  });

  it('rejects with TimeoutError and aborts the inner signal', async () => {
    let inner: AbortSignal | undefined;
    const p = withTimeout(
      (signal) => {
        inner = signal;
        return new Promise<never>(() => {});
      },
      { ms: 20, label: 'slow call' },
    );
    await expect(p).rejects.toBeInstanceOf(TimeoutError);
    await expect(p).rejects.toThrow(/slow call timed out after 20 ms/);
    expect(inner?.aborted).toBe(true);
  });

  it('rejects at once when the outer signal aborts', async () => {
    const c = new AbortController();
    const p = withTimeout(() => new Promise<never>(() => {}), { ms: 10_000, signal: c.signal });
    c.abort(new Error('stop'));
    await expect(p).rejects.toThrow('stop');
  });
});

describe('retry', () => {
  it('refuses to retry a call not declared idempotent', async () => {
    await expect(retry(async () => 1, { idempotent: false })).rejects.toThrow(/not declared idempotent/);
  });

  it('retries retryable failures with backoff until success', async () => {
    let calls = 0;
    const delays: number[] = [];
    const v = await retry(
      async () => {
        calls++;
        if (calls < 3) throw new TimeoutError('flaky');
        return 'ok';
      },
      { idempotent: true, maxAttempts: 5, initialMs: 1, maxMs: 5, minMs: 1, onRetry: (_e, _a, d) => delays.push(d) },
    );
    expect(v).toBe('ok');
    expect(calls).toBe(3);
    expect(delays).toHaveLength(2);
  });

  it('does not retry non-retryable errors', async () => {
    let calls = 0;
    await expect(
      retry(
        async () => {
          calls++;
          throw new ValidationError('bad');
        },
        { idempotent: true, maxAttempts: 5 },
      ),
    ).rejects.toBeInstanceOf(ValidationError);
    expect(calls).toBe(1);
  });

  it('gives up after maxAttempts with the last error', async () => {
    let calls = 0;
    await expect(
      retry(
        async () => {
          calls++;
          throw new TimeoutError(`t${calls}`);
        },
        { idempotent: true, maxAttempts: 3, initialMs: 1, minMs: 0, maxMs: 1 },
      ),
    ).rejects.toThrow('t3');
    expect(calls).toBe(3);
  });
});

describe('CircuitBreaker', () => {
  const fail = () => Promise.reject(new TimeoutError('down'));

  it('opens after the threshold, fails fast, half-opens after recovery and closes on success', async () => {
    const clock = fakeClock();
    const states: string[] = [];
    const b = new CircuitBreaker({ failureThreshold: 3, recoveryTimeoutMs: 1000, clock, onStateChange: (s) => states.push(s) });
    for (let i = 0; i < 3; i++) await expect(b.run(fail)).rejects.toBeInstanceOf(TimeoutError);
    expect(b.state).toBe('open');
    let called = false;
    await expect(
      b.run(async () => {
        called = true;
      }),
    ).rejects.toBeInstanceOf(CircuitOpenError);
    expect(called).toBe(false);
    clock.advance(1000);
    expect(b.state).toBe('half-open');
    await expect(b.run(async () => 'ok')).resolves.toBe('ok');
    expect(b.state).toBe('closed');
    expect(states).toEqual(['open', 'half-open', 'closed']);
  });

  it('re-opens when the half-open trial fails, and admits only one trial at a time', async () => {
    const clock = fakeClock();
    const b = new CircuitBreaker({ failureThreshold: 1, recoveryTimeoutMs: 500, clock });
    await expect(b.run(fail)).rejects.toBeInstanceOf(TimeoutError);
    clock.advance(500);
    let release!: () => void;
    const trial = b.run(() => new Promise<void>((r) => (release = r)));
    await expect(b.run(async () => 1)).rejects.toBeInstanceOf(CircuitOpenError);
    release();
    await trial;
    expect(b.state).toBe('closed');
    await expect(b.run(fail)).rejects.toBeInstanceOf(TimeoutError);
    clock.advance(500);
    await expect(b.run(fail)).rejects.toBeInstanceOf(TimeoutError);
    expect(b.state).toBe('open');
  });

  it('does not count non-retryable errors as broker failures', async () => {
    const b = new CircuitBreaker({ failureThreshold: 1 });
    await expect(b.run(() => Promise.reject(new ValidationError('x')))).rejects.toBeInstanceOf(ValidationError);
    expect(b.state).toBe('closed');
  });
});

describe('settleAll', () => {
  it('waits for every branch and keeps each result', async () => {
    const r = await settleAll([async () => 1, async () => Promise.reject(new Error('b')), async () => 3]);
    expect(r.map((x) => x.status)).toEqual(['fulfilled', 'rejected', 'fulfilled']);
    expect(r[0]).toEqual({ status: 'fulfilled', value: 1 });
  });

  it('bounds concurrency', async () => {
    let running = 0;
    let max = 0;
    const task = async () => {
      running++;
      max = Math.max(max, running);
      await new Promise((r) => setImmediate(r));
      running--;
      return running;
    };
    await settleAll(
      Array.from({ length: 10 }, () => task),
      { concurrency: 3 },
    );
    expect(max).toBe(3);
  });
});

describe('errors', () => {
  it('carry name, code, retryable and cause, and never a password', () => {
    const cause = new Error('ECONNREFUSED');
    const e = new TimeoutError('connect to amqp://app:s3cret@rabbit.prod.svc.cluster.local:5672 failed', { cause });
    expect(e).toBeInstanceOf(BusError);
    expect(e.name).toBe('TimeoutError');
    expect(e.code).toBe('TIMEOUT');
    expect(e.retryable).toBe(true);
    expect(e.cause).toBe(cause);
    expect(e.message).not.toContain('s3cret');
    expect(e.message).toContain('amqp://app:***@rabbit.prod.svc.cluster.local:5672');
  });
});
