import { spawnSync } from 'node:child_process';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * Tests are code: `tsc -p test/tsconfig.json` type-checks every test, helper and fixture against
 * the sources (vitest itself only strips types). A type error anywhere fails this one test, with
 * tsc's own messages, instead of hiding until the code it tests changes under it.
 */
describe('type check', () => {
  it('test/, src/ and vitest.config.ts type-check cleanly under the strict settings', () => {
    const root = path.resolve(__dirname, '../..');
    const tsc = path.join(root, 'node_modules/typescript/bin/tsc');
    const r = spawnSync(process.execPath, [tsc, '-p', path.join(root, 'test/tsconfig.json')], { cwd: root, encoding: 'utf8', timeout: 120_000 });
    expect(r.error).toBeUndefined();
    expect(r.stdout + r.stderr).toBe('');
    expect(r.status).toBe(0);
  }, 130_000);
});
