/**
 * The Node/V8 flags the agent runs with, for memory (docs/performance.md, Memory) and, one of them,
 * for latency (docs/performance.md, The ping tail). V8 reads them
 * when it starts, so an agent started without them (`node dist/cli.js agent`, as the test bed and
 * the bench do) replaces itself once with them added: execve(2) through koffi, so the pid stays
 * the same (systemd, the bench and the tests track it). systemd/cladnet.service passes them on
 * the command line, so there it needs no second start. They apply to the data-plane workers too.
 */
export const AGENT_NODE_FLAGS: readonly string[] = [
  '--optimize-for-size', // V8 favours memory over speed: a 1 MiB young generation, slower heap growth
  '--v8-pool-size=1', // one V8 background thread instead of four
  '--no-node-snapshot', // each isolate bootstraps only what it uses: fewer pages of the node binary, smaller heaps
  // GC work stays on the thread that allocates: Node's helper thread runs at SCHED_IDLE (src/os/sched.ts),
  // and a GC that waited for a starved helper would stall the data plane (docs/performance.md, The ping tail)
  '--single-threaded-gc',
];

/** Set in the new image; set beforehand (to anything, e.g. CLADNET_REEXEC=0), no re-exec happens. */
export const REEXEC_ENV = 'CLADNET_REEXEC';

/**
 * What the re-exec runs: the argv (flags missing from execArgv added before the script) and the
 * whole environment plus REEXEC_ENV, in execve's form (null-terminated). Everything systemd set is
 * passed on as it is: NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID (execve keeps the pid, so
 * WATCHDOG_PID still names this process and NotifyAccess=main still accepts its datagrams).
 * null: nothing to do (no flag missing, or REEXEC_ENV set).
 */
export function reexecPlan(
  execPath: string,
  execArgv: readonly string[],
  argv: readonly string[],
  env: NodeJS.ProcessEnv,
): { argv: (string | null)[]; env: (string | null)[] } | null {
  if (env[REEXEC_ENV] !== undefined) return null;
  const missing = AGENT_NODE_FLAGS.filter((f) => !execArgv.includes(f));
  if (missing.length === 0) return null;
  return {
    argv: [execPath, ...execArgv, ...missing, ...argv.slice(1), null],
    env: [...Object.entries({ ...env, [REEXEC_ENV]: '1' }).map(([k, v]) => `${k}=${v ?? ''}`), null],
  };
}

/**
 * Re-executes this process with the AGENT_NODE_FLAGS missing from process.execArgv, before the
 * script. Returns only when it does not (nothing missing, turned off, or execve failed: the agent
 * then runs as it is, with about 10 MiB more RSS).
 */
export function reexecWithAgentFlags(): void {
  const plan = reexecPlan(process.execPath, process.execArgv, process.argv, process.env);
  if (!plan) return;
  try {
    // (loaded here, not at the top: the CLI's other commands need no FFI)
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const libc = require('../os/ffi/libc') as typeof import('../os/ffi/libc');
    // Node marks stdin/stdout/stderr close-on-exec at startup (uv_disable_stdio_inheritance); the
    // new image must keep them (the journal, the test bed's log file, a terminal).
    for (const fd of [0, 1, 2]) libc.fcntl(fd, libc.F_SETFD, 0);
    libc.execve(process.execPath, plan.argv, plan.env);
  } catch {
    // koffi or libc not usable here: run without the flags
  }
}
