import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, expect, it } from 'vitest';

/**
 * `npm ci` on a fresh clone refuses a lock file out of step with package.json, and the setup's
 * fallback `npm install` then rewrites it, leaving the clone dirty (issue 12). The lock's root
 * entry is npm's copy of package.json's install-relevant fields: they must agree.
 */
const REPO = path.resolve(__dirname, '..', '..');
const pkg = JSON.parse(fs.readFileSync(path.join(REPO, 'package.json'), 'utf8')) as Record<string, unknown>;
const lock = JSON.parse(fs.readFileSync(path.join(REPO, 'package-lock.json'), 'utf8')) as {
  lockfileVersion: number;
  packages: Record<string, Record<string, unknown> & { version?: string; optional?: boolean }>;
};

describe('package-lock.json', () => {
  it('has a root entry that matches package.json (name, version, dependencies, bin, engines)', () => {
    const root = lock.packages['']!;
    for (const k of ['name', 'version', 'license', 'dependencies', 'devDependencies', 'bin', 'engines']) {
      expect({ [k]: root[k] }).toEqual({ [k]: pkg[k] });
    }
  });

  it('locks every direct dependency at a version', () => {
    const deps = { ...(pkg.dependencies as Record<string, string>), ...(pkg.devDependencies as Record<string, string>) };
    for (const name of Object.keys(deps)) expect(lock.packages[`node_modules/${name}`]?.version, name).toMatch(/^\d+\.\d+\.\d+/);
  });
});
