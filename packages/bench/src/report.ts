/** Result types (the `--json` shape) and the Markdown table. */
import { fmt, type Summary } from './stats.js';

/** One comparison of Busbar against another subject in one row. */
export interface Comparison {
  /** The subject Busbar is compared with (`raw`, `raw-batched`, a peer …). */
  readonly against: string;
  /**
   * `busbar / against` of the medians for throughput; for latency p50, CPU and in-memory overhead
   * it is the *difference* `busbar − against` in the row's unit (see `kind`).
   */
  readonly value: number;
  /** `ratio` or `difference`. */
  readonly kind: 'ratio' | 'difference';
  /**
   * Noise band: the same figure computed for `raw-2` against `raw` (two identical raw runs):
   * median and the min/max of the per-round values. A Busbar figure inside it is indistinguishable
   * from the raw client.
   */
  readonly noise?: { readonly median: number; readonly min: number; readonly max: number };
  /** The target, human-readable (`≥ 0.9×`, `≤ +0.25 ms` …), if there is one. */
  readonly target?: string;
  /** Whether the target holds (absent without a target). */
  readonly pass?: boolean;
}

/** One row: one figure of one scenario for every subject. */
export interface Row {
  readonly transport: string;
  /** `s1` … `s6`, with a suffix for variants (`s3-c1`, `s4-p99` …). */
  readonly scenario: string;
  /** Human-readable scenario name. */
  readonly name: string;
  readonly payloadBytes: number;
  /** `msg/s`, `ms`, `µs/msg`, `B/msg`. */
  readonly unit: string;
  /** Whether a larger figure is better. */
  readonly higherIsBetter: boolean;
  /** Messages per round (or seconds of load for latency rows). */
  readonly count: number;
  /** min / median / max over the rounds, per subject (`busbar`, `raw`, `raw-2`, peers …). */
  readonly subjects: Readonly<Record<string, Summary>>;
  /** Busbar against the others. */
  readonly comparisons: readonly Comparison[];
  /** Errors that made a subject's figure missing. */
  readonly errors?: Readonly<Record<string, string>>;
}

/** The whole `--json` document. */
export interface BenchReport {
  readonly schema: 'busbar-bench/1';
  readonly startedAt: string;
  readonly finishedAt: string;
  readonly options: {
    readonly full: boolean;
    readonly rounds: number;
    readonly payloads: readonly number[];
    readonly only: readonly string[];
  };
  readonly machine: {
    readonly cpus: number;
    readonly cpuModel: string;
    readonly memoryBytes: number;
    readonly node: string;
    readonly os: string;
    readonly arch: string;
    readonly loadAverageAtStart: readonly number[];
  };
  /** Client library versions and broker versions. */
  readonly versions: Readonly<Record<string, string>>;
  /** Per transport: where its broker came from, or why it was skipped. */
  readonly transports: readonly { readonly name: string; readonly broker?: string; readonly skipped?: string }[];
  /** Impls that could not be set up fairly, with the reason. */
  readonly skipped: readonly { readonly transport: string; readonly label: string; readonly reason: string }[];
  /** Subjects whose figures are not like-for-like with Busbar's, and why. */
  readonly caveats: readonly { readonly transport: string; readonly label: string; readonly note: string }[];
  /** Every figure. */
  readonly rows: readonly Row[];
  /** Broker ceilings measured with the broker's own tool, and Busbar as a fraction of them. */
  readonly ceilings: readonly {
    readonly transport: string;
    readonly tool: string;
    readonly what: string;
    readonly msgPerSec: number;
    readonly busbarScenario: string;
    readonly busbarMsgPerSec: number;
    readonly fraction: number;
  }[];
}

function cmpText(c: Comparison, unit: string): string {
  const v = c.kind === 'ratio' ? `${c.value.toFixed(2)}×` : `${c.value >= 0 ? '+' : ''}${fmt(c.value, unit)} ${unit}`;
  const noise = c.noise
    ? c.kind === 'ratio'
      ? ` (noise ${c.noise.min.toFixed(2)}–${c.noise.max.toFixed(2)})`
      : ` (noise ${fmt(c.noise.min, unit)}…${fmt(c.noise.max, unit)})`
    : '';
  const target = c.target ? ` target ${c.target} ${c.pass ? '✅' : '❌'}` : '';
  return `vs ${c.against}: **${v}**${noise}${target}`;
}

/** The Markdown report: one table per transport. */
export function markdown(report: BenchReport): string {
  const m = report.machine;
  const out: string[] = [];
  out.push(`# Busbar benchmark — ${report.startedAt}`);
  out.push('');
  out.push(
    `Machine: ${m.cpus} × ${m.cpuModel}, ${(m.memoryBytes / 2 ** 30).toFixed(0)} GiB, ${m.os} ${m.arch}, Node ${m.node}; load at start ${m.loadAverageAtStart.map((x) => x.toFixed(2)).join(' ')}. ` +
      `Rounds: ${report.options.rounds} (alternating), ${report.options.full ? 'full matrix' : 'default subset'}. Figures are median [min–max] over rounds.`,
  );
  out.push('');
  out.push(
    `Versions: ${Object.entries(report.versions)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ')}`,
  );
  for (const t of report.transports) {
    out.push('');
    out.push(`## ${t.name}${t.broker ? ` (${t.broker})` : ''}`);
    if (t.skipped) {
      out.push('');
      out.push(`Skipped: ${t.skipped}`);
      continue;
    }
    const rows = report.rows.filter((r) => r.transport === t.name);
    out.push('');
    out.push('| scenario | payload | busbar | raw | raw-2 | others | Busbar vs |');
    out.push('| --- | --- | --- | --- | --- | --- | --- |');
    for (const r of rows) {
      const cell = (label: string) => {
        const s = r.subjects[label];
        if (!s) return r.errors?.[label] ? `error` : '–';
        return `${fmt(s.median, r.unit)} [${fmt(s.min, r.unit)}–${fmt(s.max, r.unit)}]`;
      };
      const others = Object.keys(r.subjects)
        .filter((l) => !['busbar', 'raw', 'raw-2'].includes(l))
        .map((l) => `${l}: ${cell(l)}`)
        .join('<br>');
      const cmps = r.comparisons.map((c) => cmpText(c, r.unit)).join('<br>');
      const errs = r.errors ? Object.entries(r.errors).map(([l, e]) => `<br>⚠ ${l}: ${e.slice(0, 120)}`) : [];
      out.push(
        `| ${r.name} | ${r.payloadBytes} B | ${cell('busbar')} | ${cell('raw')} | ${cell('raw-2')} | ${others || '–'} | ${cmps}${errs.join('')} |`,
      );
    }
    const caveats = report.caveats.filter((c) => c.transport === t.name);
    if (caveats.length > 0) {
      out.push('');
      for (const c of caveats) out.push(`Not like-for-like — ${c.label}: ${c.note}.`);
    }
  }
  if (report.ceilings.length > 0) {
    out.push('');
    out.push('## Broker ceilings (the broker’s own tool, or a stand-in named in the tool column)');
    out.push('');
    out.push('| transport | tool | what | ceiling | Busbar (scenario) | Busbar / ceiling |');
    out.push('| --- | --- | --- | --- | --- | --- |');
    for (const c of report.ceilings) {
      out.push(
        `| ${c.transport} | ${c.tool} | ${c.what} | ${fmt(c.msgPerSec, 'msg/s')} msg/s | ${fmt(c.busbarMsgPerSec, 'msg/s')} (${c.busbarScenario}) | ${c.fraction.toFixed(2)} |`,
      );
    }
  }
  if (report.skipped.length > 0) {
    out.push('');
    out.push('## Not measured');
    out.push('');
    for (const s of report.skipped) out.push(`- ${s.transport} / ${s.label}: ${s.reason}`);
  }
  out.push('');
  return out.join('\n');
}
