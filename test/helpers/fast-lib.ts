import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { resetFastForTests } from '../../src/os/ffi/fast';

const ROOT = path.resolve(__dirname, '../..');

/**
 * Builds native/cladnet_fast.c with scripts/build-native.sh into a temporary directory and points
 * CLADNET_FAST_LIB at it (a missing compiler or header fails: scripts/setup.sh test installs gcc
 * and libssl-dev). `restore()` puts the environment back and removes the directory.
 */
export function useBuiltFastLib(): { dir: string; lib: string; restore(): void } {
  const dir = mkdtempSync(path.join(os.tmpdir(), 'cladnet-fast-'));
  try {
    execFileSync('bash', [path.join(ROOT, 'scripts/build-native.sh'), dir], { stdio: 'pipe' });
  } catch (e) {
    rmSync(dir, { recursive: true, force: true });
    const err = e as { stderr?: Buffer; message: string };
    throw new Error(`native/cladnet_fast.c did not build: ${err.stderr?.toString() || err.message}`);
  }
  const before = process.env.CLADNET_FAST_LIB;
  const lib = path.join(dir, 'libcladnet_fast.so');
  process.env.CLADNET_FAST_LIB = lib;
  resetFastForTests();
  return {
    dir,
    lib,
    restore() {
      if (before === undefined) delete process.env.CLADNET_FAST_LIB;
      else process.env.CLADNET_FAST_LIB = before;
      resetFastForTests();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
