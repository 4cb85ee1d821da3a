/** Runs every scenario of one target at one payload size, alternating subjects round by round. */
import type { Impl, Target } from './impl.js';
import { payloadFactory } from './payload.js';
import type { Progress } from './progress.js';
import type { Comparison, Row } from './report.js';
import {
  type ConsumeRound,
  consumeThroughput,
  inFlightMemory,
  type LatencyRound,
  openLoopLatency,
  publishBatched,
  publishConcurrent,
  publishSerial,
} from './scenarios.js';
import { type Summary, summarize } from './stats.js';

/** Options of {@link runSuite}. */
export interface SuiteOptions {
  readonly target: Target;
  readonly payloadBytes: number;
  readonly rounds: number;
  readonly full: boolean;
  readonly scale: number;
  readonly scenarios: ReadonlySet<string> | undefined;
  readonly peers: boolean;
  readonly progress: Progress;
  readonly skipped: (label: string, reason: string) => void;
  /** Receives each opened subject's {@link Impl.caveat}. */
  readonly caveat?: (label: string, note: string) => void;
}

/** Per-subject, per-round figures of one measurement (NaN where a round failed). */
type Figures<T> = Map<string, { values: T[]; error?: string }>;

const msg = (e: unknown) => (e instanceof Error ? e.message : String(e));

/** Scenario 4's fixed open-loop rate. */
export const LATENCY_RATE = 5000;

/** Runs the suite; returns its rows. */
export async function runSuite(o: SuiteOptions): Promise<Row[]> {
  const { target, payloadBytes: bytes, rounds, progress } = o;
  const make = payloadFactory(bytes);
  const c = target.counts;
  const n = (x: number) => Math.max(10, Math.round(x * o.scale * (bytes > 1024 ? 0.5 : 1)));
  const want = (id: string) => (o.scenarios ? o.scenarios.has(id) : o.full || id !== 's6');
  const tag = `${target.name} ${bytes}B`;
  const cap = (i: Impl, k: number) => Math.min(k, i.maxMessages ?? k);

  // Subjects: busbar, raw, raw-2 (noise band), peers.
  const subjects: Impl[] = [];
  const b = target.busbar(bytes);
  if ('skip' in b) o.skipped('busbar', b.skip);
  else subjects.push(b);
  subjects.push(target.raw(1, bytes), target.raw(2, bytes));
  // Without peers, Busbar's own variants listed with them stay (Kafka's `busbar-plt`: the same bus
  // on the opt-in client); the peer libraries and diagnostics go.
  for (const p of target.peers(bytes)) {
    if (!o.peers && !p.label.startsWith('busbar')) continue;
    if ('skip' in p) o.skipped(p.label, p.skip);
    else subjects.push(p);
  }
  const open: Impl[] = [];
  progress.step(`${tag}: opening ${subjects.length} subjects`);
  for (const s of subjects) {
    try {
      await s.open();
      open.push(s);
      if (s.caveat) o.caveat?.(s.label, s.caveat);
    } catch (e) {
      o.skipped(s.label, `could not open: ${msg(e)}`);
      await s.close().catch(() => {});
    }
  }

  const publishers = open.filter((s) => s.publish);
  const batchers = open.filter((s) => s.publishBatch && s.label === 'raw');
  const consumers = open.filter((s) => s.consume);
  const e2e = target.inMemory === true;
  const s3c = o.full ? [64, 1] : [64];
  const latencySecs = Math.max(0.5, c.s4Seconds * o.scale);
  const plan: [string, number][] = [
    ['s1', publishers.length],
    ['s2', publishers.length + batchers.length],
    ['s3', consumers.length * s3c.length],
    ['s4', consumers.length],
    ['s6', consumers.length * 2],
  ];
  progress.grow(plan.filter(([id]) => want(id) || (id === 's3' && want('s5'))).reduce((a, [, k]) => a + k * rounds, 0));

  async function measure<T>(
    id: string,
    list: Impl[],
    fn: (impl: Impl) => Promise<T>,
    labelOf = (i: Impl) => i.label,
    warm?: (impl: Impl) => Promise<unknown>,
  ): Promise<Figures<T>> {
    const out: Figures<T> = new Map();
    for (const s of list) out.set(labelOf(s), { values: [] });
    if (warm) {
      // One untimed, smaller run per subject first: JIT, connection pools and broker objects warm up.
      for (const impl of list) {
        progress.step(`${tag} ${id} warm-up: ${labelOf(impl)}`);
        try {
          await warm(impl);
        } catch (e) {
          // Not fatal: the measured rounds decide (a first-use failure, e.g. topic creation, may be transient).
          progress.log(`bench: ${tag} ${id} ${labelOf(impl)} warm-up failed: ${msg(e)}`);
        }
      }
    }
    for (let r = 0; r < rounds; r++) {
      for (let k = 0; k < list.length; k++) {
        const impl = list[(k + r) % list.length] as Impl;
        const slot = out.get(labelOf(impl)) as { values: T[]; error?: string };
        progress.step(`${tag} ${id} round ${r + 1}/${rounds}: ${labelOf(impl)}`);
        if (slot.error === undefined) {
          try {
            await impl.recycle?.();
            slot.values.push(await fn(impl));
          } catch (e) {
            slot.error = msg(e);
            progress.log(`bench: ${tag} ${id} ${labelOf(impl)} failed: ${slot.error}`);
          }
        }
        progress.tick();
      }
    }
    return out;
  }

  const rows: Row[] = [];
  const base = { transport: target.name, payloadBytes: bytes };
  const row = <T>(
    scenario: string,
    name: string,
    unit: string,
    higherIsBetter: boolean,
    count: number,
    figs: Figures<T>,
    pick: (t: T) => number,
    targets: TargetSpec[],
    againstPeers = true,
  ) => {
    const subjectsOut: Record<string, Summary> = {};
    const perRound: Record<string, number[]> = {};
    const errors: Record<string, string> = {};
    for (const [label, f] of figs) {
      if (f.values.length > 0) {
        perRound[label] = f.values.map(pick);
        subjectsOut[label] = summarize(perRound[label]);
      }
      if (f.error) errors[label] = f.error;
    }
    const comparisons = compare(perRound, subjectsOut, higherIsBetter, targets, againstPeers ? open : []);
    const r: Row = { ...base, scenario, name, unit, higherIsBetter, count, subjects: subjectsOut, comparisons };
    rows.push(Object.keys(errors).length > 0 ? { ...r, errors } : r);
  };

  try {
    if (!e2e && (want('s1') || want('s2'))) {
      for (const s of publishers) {
        try {
          await s.preparePublishOnly?.();
        } catch (e) {
          progress.log(`bench: ${tag} ${s.label}: preparing the publish-only scenarios failed: ${msg(e)}`);
        }
      }
    }
    if (want('s1')) {
      const k = n(c.s1);
      const f = await measure(
        's1',
        publishers,
        (i) => publishSerial(i, cap(i, k), make, e2e),
        undefined,
        (i) => publishSerial(i, Math.ceil(cap(i, k) / 5), make, e2e),
      );
      if (e2e) {
        row('s1', 'publish → handler, awaited one by one', 'msg/s', true, k, f, (x) => x, [{ against: 'raw', kind: 'ratio' }]);
        row(
          's1-us',
          'per-message cost, awaited one by one',
          'µs/msg',
          false,
          k,
          f,
          (x) => 1e6 / x,
          [
            { against: 'raw', kind: 'difference', max: 1, label: '≤ +1 µs' },
            { against: 'raw+json', kind: 'difference' },
          ],
          false,
        );
      } else {
        row('s1', 'publish, awaited one by one', 'msg/s', true, k, f, (x) => x, [
          { against: 'raw', kind: 'ratio', min: 0.9, label: '≥ 0.9×' },
          { against: 'raw+ce-headers', kind: 'ratio' },
        ]);
      }
    }
    if (want('s1') && target.costs) {
      const costs = target.costs.bind(target);
      const f: Figures<number> = new Map();
      for (let r = 0; r < rounds; r++) {
        progress.step(`${tag} costs round ${r + 1}/${rounds}`);
        for (const [label, v] of Object.entries(await costs(bytes))) {
          const slot = f.get(label) ?? { values: [] };
          slot.values.push(v);
          f.set(label, slot);
        }
      }
      row('s1-costs', "cost of Busbar's pieces per message (not a comparison)", 'µs/msg', false, 0, f, (x) => x, [], false);
    }
    if (want('s2')) {
      const k = n(c.s2);
      const f = await measure(
        's2',
        publishers,
        (i) => publishConcurrent(i, cap(i, k), 100, make, e2e),
        undefined,
        (i) => publishConcurrent(i, Math.ceil(cap(i, k) / 5), 100, make, e2e),
      );
      const fb = await measure(
        's2',
        batchers,
        (i) => publishBatched(i, k, make, e2e, 100),
        () => 'raw-batched',
      );
      for (const [l, v] of fb) f.set(l, v);
      row('s2', `publish, 100 concurrent publishers${e2e ? ' → handler' : ''}`, 'msg/s', true, k, f, (x) => x, [
        e2e ? { against: 'raw', kind: 'ratio' } : { against: 'raw', kind: 'ratio', min: 1.0, label: '≥ 1.0× naive' },
        e2e ? { against: 'raw-batched', kind: 'ratio' } : { against: 'raw-batched', kind: 'ratio', min: 0.85, label: '≥ 0.85×' },
        { against: 'raw+ce-headers', kind: 'ratio' },
      ]);
    }
    let consume64: Figures<ConsumeRound> | undefined;
    if (want('s3') || want('s5')) {
      const k = n(c.s3);
      for (const conc of s3c) {
        const kc = conc === 1 ? Math.max(10, Math.round(k / 10)) : k;
        const f = await measure(
          `s3 c=${conc}`,
          consumers,
          (i) => consumeThroughput(i, cap(i, kc), conc, make),
          undefined,
          (i) => consumeThroughput(i, Math.ceil(cap(i, kc) / 5), conc, make),
        );
        if (conc === 64) consume64 = f;
        if (want('s3')) {
          row(
            `s3-c${conc}`,
            `end to end publish → handler → ack, concurrency ${conc}`,
            'msg/s',
            true,
            conc === 1 ? Math.round(k / 10) : k,
            f,
            (x) => x.rate,
            [{ against: 'raw', kind: 'ratio', min: 0.8, label: '≥ 0.8×' }],
          );
        }
      }
    }
    if (want('s4')) {
      const f = await measure('s4', consumers, (i) => openLoopLatency(i, LATENCY_RATE, latencySecs, make, i.label.startsWith('raw')));
      const nm = `latency at ${LATENCY_RATE} msg/s open loop`;
      row('s4-p50', `${nm}, p50`, 'ms', false, latencySecs, f, (x: LatencyRound) => x.p50, [
        { against: 'raw', kind: 'difference', max: 0.25, label: '≤ +0.25 ms' },
      ]);
      row('s4-p95', `${nm}, p95`, 'ms', false, latencySecs, f, (x: LatencyRound) => x.p95, [{ against: 'raw', kind: 'ratio' }]);
      row('s4-p99', `${nm}, p99`, 'ms', false, latencySecs, f, (x: LatencyRound) => x.p99, [
        { against: 'raw', kind: 'ratio', max: 1.5, label: '≤ 1.5×' },
      ]);
      row('s4-rate', `${nm}, achieved send rate`, 'msg/s', true, latencySecs, f, (x: LatencyRound) => x.achievedRate, [], false);
    }
    if (want('s5') && consume64) {
      const k = n(c.s3);
      row(
        's5-publish',
        'client CPU per message, publishing (s3 prefill)',
        'µs/msg',
        false,
        k,
        consume64,
        (x) => x.publishCpuUs,
        [{ against: 'raw', kind: 'difference' }],
        false,
      );
      row(
        's5-consume',
        'client CPU per message, consuming (s3, c=64)',
        'µs/msg',
        false,
        k,
        consume64,
        (x) => x.consumeCpuUs,
        [{ against: 'raw', kind: 'difference' }],
        false,
      );
      row('s5', 'client CPU per message, publish + consume', 'µs/msg', false, k, consume64, (x) => x.publishCpuUs + x.consumeCpuUs, [
        { against: 'raw', kind: 'difference', max: 5, label: '≤ +5 µs' },
      ]);
    }
    if (want('s6')) {
      const k = Math.max(10, Math.round(c.s6 * Math.min(1, o.scale * 4)));
      const f1 = await measure(`s6 N=${k}`, consumers, (i) => inFlightMemory(i, k, make));
      const f2 = await measure(`s6 2N=${2 * k}`, consumers, (i) => inFlightMemory(i, 2 * k, make));
      row(
        's6-n',
        `heap per in-flight message, N = ${k}`,
        'B/msg',
        false,
        k,
        f1,
        (x) => x.perMessage,
        [{ against: 'raw', kind: 'difference' }],
        false,
      );
      const growth: Figures<number> = new Map();
      for (const [label, v] of f2) {
        const at1 = f1.get(label)?.values ?? [];
        const vals = v.values.map((x, r) => x.perMessage / ((at1[r]?.perMessage ?? Number.NaN) || Number.NaN));
        growth.set(label, v.error ? { values: vals, error: v.error } : { values: vals });
      }
      row(
        's6-2n',
        `heap per in-flight message, 2N = ${2 * k}`,
        'B/msg',
        false,
        2 * k,
        f2,
        (x) => x.perMessage,
        [{ against: 'raw', kind: 'difference' }],
        false,
      );
      row(
        's6-growth',
        'heap per in-flight message, 2N ÷ N (must not grow)',
        '×',
        false,
        2 * k,
        growth,
        (x) => x,
        [{ against: 'self', kind: 'ratio', max: 1.1, label: '≤ 1.10' }],
        false,
      );
    }
  } finally {
    progress.step(`${tag}: closing, deleting run-unique objects`);
    for (const s of open) {
      let timer: NodeJS.Timeout | undefined;
      await Promise.race([
        s.close(),
        new Promise((_, reject) => {
          timer = setTimeout(() => reject(new Error('close did not finish within 60 s')), 60_000);
        }),
      ])
        .catch((e: unknown) => progress.log(`bench: ${tag} closing ${s.label} failed: ${msg(e)}`))
        .finally(() => clearTimeout(timer));
    }
  }
  return rows;
}

/** What a comparison is judged against. */
interface TargetSpec {
  /** Subject label, or `self` (the row's own Busbar figure is the ratio: scenario 6 growth). */
  readonly against: string;
  readonly kind: 'ratio' | 'difference';
  readonly min?: number;
  readonly max?: number;
  readonly label?: string;
}

function compare(
  perRound: Record<string, number[]>,
  summaries: Record<string, Summary>,
  higherIsBetter: boolean,
  specs: TargetSpec[],
  open: Impl[],
): Comparison[] {
  const out: Comparison[] = [];
  const busbar = summaries.busbar;
  if (!busbar) return out;
  const noiseOf = (kind: 'ratio' | 'difference') => {
    const raw = perRound.raw;
    const raw2 = perRound['raw-2'];
    const s1 = summaries.raw;
    const s2 = summaries['raw-2'];
    if (!raw || !raw2 || !s1 || !s2) return undefined;
    const per = raw2.map((x, i) => (kind === 'ratio' ? x / (raw[i] as number) : x - (raw[i] as number))).filter(Number.isFinite);
    if (per.length === 0) return undefined;
    return { median: kind === 'ratio' ? s2.median / s1.median : s2.median - s1.median, min: Math.min(...per), max: Math.max(...per) };
  };
  const judge = (value: number, spec: { min?: number; max?: number }) =>
    Number.isFinite(value) && (spec.min === undefined || value >= spec.min) && (spec.max === undefined || value <= spec.max);
  for (const spec of specs) {
    if (spec.against === 'self') {
      const v = busbar.median;
      out.push({ against: 'busbar at N', value: v, kind: 'ratio', ...(spec.label ? { target: spec.label, pass: judge(v, spec) } : {}) });
      continue;
    }
    const other = summaries[spec.against];
    if (!other) continue;
    const value = spec.kind === 'ratio' ? busbar.median / other.median : busbar.median - other.median;
    const noise = spec.against === 'raw' ? noiseOf(spec.kind) : undefined;
    const c: Comparison = { against: spec.against, value, kind: spec.kind, ...(noise ? { noise } : {}) };
    out.push(spec.label ? { ...c, target: spec.label, pass: judge(value, spec) } : c);
  }
  // Peers: Busbar ≥ 1.0× each (≤ 1.0× where lower is better).
  for (const p of open.filter((i) => i.peer)) {
    const other = summaries[p.label];
    if (!other || specs.some((s) => s.against === p.label)) continue;
    const value = busbar.median / other.median;
    out.push({
      against: p.label,
      value,
      kind: 'ratio',
      target: higherIsBetter ? '≥ 1.0×' : '≤ 1.0×',
      pass: higherIsBetter ? value >= 1 : value <= 1,
    });
  }
  return out;
}
