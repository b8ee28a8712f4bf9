/**
 * A preload for bench/rss-probe.ts (`NODE_OPTIONS=--require=dist-bench/bench/rss-heap.js`): every
 * thread of the agent (the main thread and each data-plane worker; NODE_OPTIONS reaches both) writes
 * its V8 heap statistics once a second to $CLADNET_RSS_HEAP_DIR/<pid>-<threadId>.json, so that the
 * probe can say how much of the anonymous RSS is which isolate's heap. Imports only node builtins;
 * the timer is unref'd and the write is about 1 KiB, so the agent under test is the agent.
 *
 * The data-plane worker never returns to its event loop while it runs (it loops on poll(2)), so
 * its timer never fires: it writes once more when it exits (the agent stopping), with its heap as
 * it was at idle plus whatever shutdown allocated, and `atExit: true`.
 */
import * as fs from 'node:fs';
import * as v8 from 'node:v8';
import { isMainThread, threadId } from 'node:worker_threads';

/** What one thread writes (MiB, physical: the resident part of what V8 committed). */
export interface ThreadHeap {
  pid: number;
  threadId: number;
  at: number;
  /** total_physical_size */
  physical: number;
  /** used_heap_size */
  used: number;
  /** physical size by space (new_space, old_space, code_space, map/large object spaces, ...) */
  spaces: Record<string, number>;
  /** bytecode and code (v8.getHeapCodeStatistics), script sources: parts of the spaces above */
  code: { bytecode: number; code: number; sources: number };
  /** ArrayBuffers and other memory V8 knows of outside its heap (malloc or mmap) */
  external: number;
  /** written as the thread exited (a worker that never ran its event loop) */
  atExit: boolean;
}

const MIB = 2 ** 20;
const r2 = (n: number): number => Math.round((n / MIB) * 100) / 100;

function sample(atExit: boolean): ThreadHeap {
  const h = v8.getHeapStatistics();
  const c = v8.getHeapCodeStatistics();
  return {
    pid: process.pid,
    threadId,
    at: Date.now(),
    physical: r2(h.total_physical_size),
    used: r2(h.used_heap_size),
    spaces: Object.fromEntries(v8.getHeapSpaceStatistics().map((s) => [s.space_name, r2(s.physical_space_size)])),
    code: { bytecode: r2(c.bytecode_and_metadata_size), code: r2(c.code_and_metadata_size), sources: r2(c.external_script_source_size) },
    external: r2(h.external_memory),
    atExit,
  };
}

const dir = process.env['CLADNET_RSS_HEAP_DIR'];
if (dir) {
  const file = `${dir}/${process.pid}-${threadId}.json`;
  const write = (atExit: boolean): void => {
    try {
      fs.writeFileSync(file + '.tmp', JSON.stringify(sample(atExit)));
      fs.renameSync(file + '.tmp', file);
    } catch {
      // the probe removed its directory: nothing to report to
    }
  };
  setInterval(() => write(false), 1000).unref();
  if (!isMainThread) process.on('exit', () => write(true));
}
