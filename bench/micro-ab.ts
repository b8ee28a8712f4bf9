/**
 * A/B driver for the stage path (micro.ts's `stagesCase`) of any build, for CPU time or an
 * instruction count (docs/performance.md, 2026-12-02):
 *
 *   node dist-bench/bench/micro-ab.js cpu <dist-bench dir> <crypto backend> <packet size>
 *       1 s warm-up, then 9 trials of 300 batches of 64; prints {"min","med"} process CPU ns per
 *       packet (process.cpuUsage: run it with --v8-pool-size=1 so that little else runs)
 *   valgrind --tool=callgrind --callgrind-out-file=/dev/null \
 *     node dist-bench/bench/micro-ab.js count <dist-bench dir> <crypto backend> <packet size> <batches>
 *       300 warm-up batches, then <batches>; instructions per packet = (count(N) - count(0)) / 64N
 *
 * <dist-bench dir> is the dist-bench/ of the build to measure (e.g. from `git archive <commit>`
 * and `tsc -p bench/tsconfig.json`), so builds are compared with the same driver.
 */
import * as path from 'node:path';

interface Mods {
  stagesCase: typeof import('./micro').stagesCase;
  createAead: typeof import('../src/crypto/aead').createAead;
}

async function main(): Promise<void> {
  const [mode, dir, backend, sizeArg, batchesArg] = process.argv.slice(2);
  if ((mode !== 'cpu' && mode !== 'count') || !dir || !backend || !sizeArg) {
    process.stderr.write('usage: micro-ab.js cpu|count <dist-bench dir> <backend> <size> [batches]\n');
    process.exit(2);
  }
  const root = path.resolve(dir);
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const m: Mods = { stagesCase: require(path.join(root, 'bench/micro.js')).stagesCase, createAead: require(path.join(root, 'src/crypto/aead.js')).createAead };
  const aead = await m.createAead(backend as Parameters<Mods['createAead']>[0]);
  const c = m.stagesCase(aead, Number(sizeArg));
  if (mode === 'count') {
    for (let i = 0; i < 300; i++) c.stages.fn();
    const n = Number(batchesArg ?? 0);
    for (let i = 0; i < n; i++) c.stages.fn();
  } else {
    const cpu = (): number => {
      const u = process.cpuUsage();
      return (u.user + u.system) * 1000;
    };
    const end = Date.now() + 1000;
    while (Date.now() < end) c.stages.fn();
    const xs: number[] = [];
    for (let k = 0; k < 9; k++) {
      const c0 = cpu();
      for (let i = 0; i < 300; i++) c.stages.fn();
      xs.push((cpu() - c0) / (300 * 64));
    }
    xs.sort((a, b) => a - b);
    process.stdout.write(JSON.stringify({ aead: aead.name, min: Math.round(xs[0]!), med: Math.round(xs[4]!) }) + '\n');
  }
  c.check();
  c.close();
}

main().catch((e: unknown) => {
  process.stderr.write(`micro-ab: ${(e as Error).stack ?? String(e)}\n`);
  process.exit(1);
});
