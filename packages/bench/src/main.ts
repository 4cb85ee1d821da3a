/**
 * `pnpm bench`: Busbar against the raw clients, the peers and the broker's own ceiling, in one
 * process run, alternating round by round. Progress on stderr, the Markdown table on stdout,
 * every figure as JSON with `--json FILE`. See packages/bench/README.md.
 */
import { writeFileSync } from 'node:fs';
import { arch, cpus, loadavg, release, totalmem, type } from 'node:os';
import { parseArgs } from 'node:util';
import { findBroker } from './brokers.js';
import { runCeilings } from './ceilings.js';
import type { Impl, Target } from './impl.js';
import { Progress } from './progress.js';
import { type BenchReport, markdown, type Row } from './report.js';
import { runSuite } from './suite.js';
import { memoryTarget } from './targets/memory.js';
import { versionOf } from './versions.js';

const HELP = `Usage: pnpm bench [--full] [--rounds N] [--only memory,rabbitmq,redis-streams,kafka]
                  [--payload 256,4096] [--scale F] [--json FILE] [--no-peers] [--no-ceilings]

  --full         the whole matrix (4 KiB payloads too, concurrency 1, longer latency runs, more messages)
  --rounds N     rounds per scenario, alternating subjects (default 5, minimum 1)
  --only LIST    transports to run (default: all that are found)
  --payload LIST payload sizes in bytes (default 256; --full: 256,4096)
  --scenarios L  scenarios to run, e.g. s1,s2,s3 (default s1–s5; --full adds s6 and concurrency 1)
  --scale F      multiply message counts and latency seconds by F (smoke runs: --scale 0.05 --rounds 1)
  --json FILE    write every figure as JSON (shape: packages/bench/README.md)
  --no-peers     skip peer libraries and diagnostics (Busbar's own variants, e.g. busbar-plt, stay)
  --no-ceilings  skip the broker's own benchmark tools
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      full: { type: 'boolean', default: false },
      rounds: { type: 'string' },
      only: { type: 'string' },
      payload: { type: 'string' },
      scenarios: { type: 'string' },
      scale: { type: 'string' },
      json: { type: 'string' },
      'no-peers': { type: 'boolean', default: false },
      'no-ceilings': { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
  });
  if (values.help) {
    process.stdout.write(HELP);
    return;
  }
  const full = values.full === true;
  const rounds = Math.max(1, Number(values.rounds ?? 5));
  const scale = Number(values.scale ?? 1);
  if (!Number.isFinite(scale) || scale <= 0) throw new Error('--scale must be a positive number');
  const payloads = (values.payload ?? (full ? '256,4096' : '256')).split(',').map((s) => Number(s.trim()));
  const all = ['memory', 'rabbitmq', 'redis-streams', 'kafka'];
  const only = values.only ? values.only.split(',').map((s) => s.trim()) : all;
  const scenarios = values.scenarios ? new Set(values.scenarios.split(',').map((s) => s.trim())) : undefined;
  const runId = `${Date.now().toString(36)}${Math.random().toString(36).slice(2, 6)}`;
  const startedAt = new Date().toISOString();
  const progress = new Progress(0);
  const log = (m: string) => progress.log(m);

  const report: {
    transports: { name: string; broker?: string; skipped?: string }[];
    skipped: { transport: string; label: string; reason: string }[];
    caveats: { transport: string; label: string; note: string }[];
    rows: Row[];
    versions: Record<string, string>;
  } = {
    transports: [],
    skipped: [],
    caveats: [],
    rows: [],
    versions: {
      '@busbar/core': versionOf('@busbar/core'),
      zod: versionOf('zod'),
      amqplib: versionOf('amqplib'),
      ioredis: versionOf('ioredis'),
      kafkajs: versionOf('kafkajs'),
      eventemitter3: versionOf('eventemitter3'),
    },
  };

  const targets: Target[] = [];
  const stops: (() => Promise<void>)[] = [];
  for (const name of only) {
    if (!all.includes(name)) throw new Error(`unknown transport "${name}" (one of ${all.join(', ')})`);
    if (name === 'memory') {
      targets.push(memoryTarget(runId, full));
      continue;
    }
    const kind = name === 'redis-streams' ? 'redis' : (name as 'rabbitmq' | 'kafka');
    const found = await findBroker(kind, log);
    if (!found.ok) {
      if (process.env.BUSBAR_REQUIRE_BROKERS === '1') throw new Error(`broker required but missing — ${found.reason}`);
      report.transports.push({ name, skipped: found.reason });
      log(`bench: skipping ${name}: ${found.reason}`);
      continue;
    }
    stops.push(() => found.broker.stop());
    try {
      const mod = (await import(`./targets/${name}.js`)) as {
        createTarget(url: string, via: string, runId: string, full: boolean): Promise<Target>;
      };
      targets.push(await mod.createTarget(found.broker.url, found.broker.via, runId, full));
    } catch (e) {
      const reason = `could not set up: ${e instanceof Error ? e.message : String(e)}`;
      report.transports.push({ name, skipped: reason });
      log(`bench: skipping ${name}: ${reason}`);
    }
  }

  const ceilings: BenchReport['ceilings'][number][] = [];
  try {
    for (const target of targets) {
      report.transports.push({ name: target.name, broker: target.broker });
      Object.assign(report.versions, target.versions);
      for (const bytes of payloads) {
        const rows = await runSuite({
          target,
          payloadBytes: bytes,
          rounds,
          full,
          scale,
          scenarios,
          peers: values['no-peers'] !== true,
          progress,
          skipped: (label, reason) => {
            if (!report.skipped.some((s) => s.transport === target.name && s.label === label && s.reason === reason)) {
              report.skipped.push({ transport: target.name, label, reason });
            }
          },
          caveat: (label, note) => {
            if (!report.caveats.some((c) => c.transport === target.name && c.label === label)) {
              report.caveats.push({ transport: target.name, label, note });
            }
          },
        });
        report.rows.push(...rows);
      }
      if (values['no-ceilings'] !== true) {
        progress.step(`${target.name}: broker ceiling`);
        ceilings.push(...(await runCeilings(target, report.rows, runId, log)));
      }
      await target.dispose();
    }
  } finally {
    for (const stop of stops) await stop().catch(() => {});
  }
  progress.finish();

  const cpuList = cpus();
  const full_: BenchReport = {
    schema: 'busbar-bench/1',
    startedAt,
    finishedAt: new Date().toISOString(),
    options: { full, rounds, payloads, only },
    machine: {
      cpus: cpuList.length,
      cpuModel: cpuList[0]?.model.trim() ?? '?',
      memoryBytes: totalmem(),
      node: process.version,
      os: `${type()} ${release()}`,
      arch: arch(),
      loadAverageAtStart: loadavgAtStart,
    },
    versions: report.versions,
    transports: report.transports,
    skipped: report.skipped,
    caveats: report.caveats,
    rows: report.rows,
    ceilings,
  };
  await new Promise<void>((resolve) => process.stdout.write(markdown(full_), () => resolve()));
  if (values.json) {
    writeFileSync(values.json, `${JSON.stringify(full_, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2)}\n`);
    process.stderr.write(`bench: wrote ${values.json}\n`);
  }
}

const loadavgAtStart = loadavg();

/** Exported for targets: an impl placeholder for something that cannot run. */
export type Skip = { label: string; skip: string };
export type { Impl };

main()
  .catch((error: unknown) => {
    process.stderr.write(`\nbench failed: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`);
    process.exitCode = 1;
  })
  .finally(() => {
    // Some peers leave handles behind (signal listeners, sockets in their close paths): everything
    // of ours is closed and deleted by now, so do not wait for them.
    process.exit();
  });
