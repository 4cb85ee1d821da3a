import { defineConfig } from 'vitest/config';

// One root config; `pnpm vitest run` runs every project. Packages resolve to their built `dist`
// (the test command builds first with `tsc -b`).
export default defineConfig({
  test: {
    // Transports share 2 cores with their brokers: one test file at a time keeps timings honest.
    fileParallelism: false,
    reporters: process.env.CI ? ['default', ['junit', { outputFile: 'reports/junit.xml' }]] : ['default'],
    projects: [
      {
        test: { name: 'core', include: ['packages/core/test/**/*.test.ts'], environment: 'node' },
      },
      {
        test: { name: 'memory', include: ['packages/memory/test/**/*.test.ts'], environment: 'node' },
      },
      {
        // @busbar/opentelemetry and its Prometheus example (memory transport, no broker needed).
        test: {
          name: 'opentelemetry',
          include: ['packages/opentelemetry/test/**/*.test.ts', 'packages/example-otel/test/**/*.test.ts'],
          environment: 'node',
        },
      },
      {
        // Runs the built demo against dead ports (no broker needed): a failed start exits.
        test: { name: 'demo', include: ['packages/demo/test/**/*.test.ts'], environment: 'node', testTimeout: 60_000 },
      },
      {
        test: {
          name: 'rabbitmq',
          include: ['integration/rabbitmq/**/*.test.ts'],
          environment: 'node',
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'redis-streams',
          include: ['integration/redis-streams/**/*.test.ts'],
          environment: 'node',
          testTimeout: 60_000,
          hookTimeout: 120_000,
        },
      },
      {
        test: {
          name: 'kafka',
          include: ['integration/kafka/**/*.test.ts'],
          environment: 'node',
          testTimeout: 90_000,
          hookTimeout: 180_000,
        },
      },
      {
        // Fault suite: restarts and disrupts brokers, so it runs after every other project
        // (groupOrder 1; the others are 0), one file at a time. integration/faults/README.md.
        test: {
          name: 'faults',
          include: ['integration/faults/**/*.test.ts'],
          environment: 'node',
          testTimeout: 180_000,
          hookTimeout: 180_000,
          globalSetup: ['integration/faults/lib/global-setup.ts'],
          sequence: { groupOrder: 1 },
        },
      },
    ],
  },
});
