/**
 * CPU time of processes from /proc/<pid>/stat, and etcd's Prometheus counters from /metrics.
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';

let clkTck: number | null = null;

/** Clock ticks per second (getconf CLK_TCK; 100 on Linux when getconf is missing). */
export function ticksPerSecond(): number {
  if (clkTck === null) {
    try {
      clkTck = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;
    } catch {
      clkTck = 100;
    }
  }
  return clkTck;
}

/** utime + stime of `pid` (all its threads) in seconds; null when the process is gone. */
export function cpuSeconds(pid: number): number | null {
  let text: string;
  try {
    text = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces and parentheses: fields start after the last ')'.
  const rest = text.slice(text.lastIndexOf(')') + 2).split(' ');
  const utime = Number(rest[11]);
  const stime = Number(rest[12]);
  if (!Number.isFinite(utime) || !Number.isFinite(stime)) return null;
  return (utime + stime) / ticksPerSecond();
}

/** Sum of cpuSeconds over `pids` (a gone process counts 0). */
export function cpuOf(pids: readonly number[]): number {
  return pids.reduce((s, p) => s + (cpuSeconds(p) ?? 0), 0);
}

/** Max open files of this process (soft, hard), from /proc/self/limits. */
export function openFileLimits(): { soft: number; hard: number } | null {
  try {
    const line = fs.readFileSync('/proc/self/limits', 'utf8').split('\n').find((l) => l.startsWith('Max open files'));
    const m = line?.match(/Max open files\s+(\S+)\s+(\S+)/);
    if (!m) return null;
    const num = (s: string) => (s === 'unlimited' ? Infinity : Number(s));
    return { soft: num(m[1]!), hard: num(m[2]!) };
  } catch {
    return null;
  }
}

/**
 * Raises this process's open-file limit to `want` (children and etcd, started later, inherit
 * it), with prlimit(1) on our own pid since Node has no setrlimit. Returns the soft limit after.
 */
export function raiseOpenFiles(want: number): number {
  const now = openFileLimits();
  if (now === null || now.soft >= want) return now?.soft ?? 0;
  const hard = Math.max(now.hard === Infinity ? want : now.hard, want);
  try {
    execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${want}:${hard}`], { stdio: 'ignore' });
  } catch {
    // not root, or no prlimit: try the soft limit alone, up to the hard one
    try {
      execFileSync('prlimit', ['--pid', String(process.pid), `--nofile=${Math.min(want, now.hard)}:${now.hard}`], { stdio: 'ignore' });
    } catch {
      /* keep what we have; the caller checks */
    }
  }
  return openFileLimits()?.soft ?? 0;
}

/** etcd's /metrics: the sum over labels of each named counter (0 when absent). */
export async function etcdMetrics(endpoint: string, names: readonly string[]): Promise<Record<string, number>> {
  const res = await fetch(`${endpoint}/metrics`, { signal: AbortSignal.timeout(10_000) });
  if (!res.ok) throw new Error(`${endpoint}/metrics: HTTP ${res.status}`);
  const text = await res.text();
  const out: Record<string, number> = Object.fromEntries(names.map((n) => [n, 0]));
  for (const line of text.split('\n')) {
    if (line.startsWith('#')) continue;
    const sp = line.lastIndexOf(' ');
    if (sp < 0) continue;
    const brace = line.indexOf('{');
    const name = brace >= 0 && brace < sp ? line.slice(0, brace) : line.slice(0, sp);
    if (name in out) out[name]! += Number(line.slice(sp + 1));
  }
  return out;
}
