/** What a process costs, from /proc: CPU time of all its threads and resident memory. */
import * as fs from 'node:fs';
import { runSync } from '../../src/testbed/run';

const CLK_TCK = Number(runSync(['getconf', 'CLK_TCK']).stdout.trim()) || 100;

/** CPU seconds used so far by every thread of `pid` (utime + stime, /proc/<pid>/stat fields 14, 15). */
export function cpuSeconds(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  return (Number(f[11]) + Number(f[12])) / CLK_TCK;
}

/** Percent of one core used by `pid` over the next `ms`. */
export async function cpuPercent(pid: number, ms: number): Promise<number> {
  const c0 = cpuSeconds(pid);
  const t0 = performance.now();
  await new Promise((r) => setTimeout(r, ms));
  return (100 * (cpuSeconds(pid) - c0)) / ((performance.now() - t0) / 1000);
}

/**
 * Percent of one core used by `pid` over the next `ms`, and the CPU milliseconds of each second of
 * it (the last entry covers what is left): a failure can then say whether the time was spread or
 * came in one burst (a GC, a compile, a reconnect).
 */
export async function cpuSeries(pid: number, ms: number): Promise<{ pct: number; perSecondMs: number[] }> {
  const c0 = cpuSeconds(pid);
  const t0 = performance.now();
  const perSecondMs: number[] = [];
  let prev = c0;
  for (let left = ms; left > 0; left -= 1000) {
    await new Promise((r) => setTimeout(r, Math.min(1000, left)));
    const c = cpuSeconds(pid);
    perSecondMs.push(Math.round((c - prev) * 1000));
    prev = c;
  }
  return { pct: (100 * (prev - c0)) / ((performance.now() - t0) / 1000), perSecondMs };
}

/** Resident set size of `pid` in bytes (VmRSS). */
export function rssBytes(pid: number): number {
  const m = /^VmRSS:\s+(\d+) kB$/m.exec(fs.readFileSync(`/proc/${pid}/status`, 'utf8'));
  if (!m) throw new Error(`no VmRSS for pid ${pid}`);
  return Number(m[1]) * 1024;
}
