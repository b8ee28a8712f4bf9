import * as fs from 'node:fs';
import * as path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { unitExec } from '../../src/cli/cloud-init';
import { cli, networkKeyFile, waitUntil, type AgentStatus } from '../../src/testbed/agents';
import { startMeshBed, type MeshBed } from '../../src/testbed/mesh';
import { firstReply, ping } from '../../src/testbed/traffic';
import { bootContainer, ensureRootfs, type Container } from '../helpers/nspawn';

/**
 * Issue 12, "boot test with a real systemd": `cladnet cloud-init` user data, applied by cloud-init
 * in a Debian 12 rootfs booted by systemd-nspawn with systemd as PID 1, makes a host that joins a
 * running mesh.
 *
 * The test bed runs etcd and agents h1, h2 in their namespaces; the container joins h3's namespace
 * (--network-namespace-path). The operator's path: `token create --name h3 --uses 1`, then
 * `cloud-init --name h3 --token-file FILE --install present --node present`; the VM makes its own
 * key and enrols with the token (no key in the user data). "present": the rootfs has neither
 * Node 20 nor cladnet, so this host's /usr/bin/node and this checkout are bound read-only where the
 * unit (the package's systemd/cladnet.service, shipped in the user data) runs them: an image with
 * cladnet baked in. cloud-init's modules (write_files, runcmd) write the files and enable the unit.
 *
 * Checked: cloud-init finished without errors, the files have their modes, the host enrolled (its
 * key made on the VM, the token file removed), the unit is active
 * (and, when the unit is Type=notify, has its STATUS line), h1 and h2 see h3 up and ping it. When
 * the unit has WatchdogSec=: the agent is SIGSTOPped, the watchdog restarts it (NRestarts >= 1),
 * and it answers pings again.
 */
const isRoot = process.getuid?.() === 0;
const NET = 'ciboot';
const REPO = path.resolve(__dirname, '..', '..');
const UNIT = fs.readFileSync(path.join(REPO, 'systemd', 'cladnet.service'), 'utf8');
const NOTIFY = /^Type=notify\s*$/m.test(UNIT);
const WATCHDOG = /^WatchdogSec=/m.test(UNIT);

describe.skipIf(!isRoot)('a Debian VM booted by systemd with `cladnet cloud-init` user data joins the mesh', () => {
  let bed: MeshBed;
  let vm: Container | undefined;
  let rootfsNote = '';

  beforeAll(async () => {
    const t0 = Date.now();
    const rootfs = await ensureRootfs();
    rootfsNote = rootfs.builtMs === null ? `rootfs cached at ${rootfs.dir}` : `rootfs built in ${(rootfs.builtMs / 1000).toFixed(0)} s at ${rootfs.dir}`;
    console.log(`${rootfsNote} (${Date.now() - t0} ms)`);
    bed = await startMeshBed({ topology: { hosts: 3 }, agents: 2, network: NET });
  }, 16 * 60_000);
  afterAll(async () => {
    await vm?.stop().catch((e: unknown) => console.log(`container stop: ${String(e)}`));
    await bed?.destroy();
  }, 60_000);

  const dump = (c: Container) =>
    [
      '--- /var/log/cloud-init-output.log',
      c.tail('var/log/cloud-init-output.log'),
      '--- console',
      fs.existsSync(c.consoleLog) ? fs.readFileSync(c.consoleLog, 'utf8').split('\n').slice(-30).join('\n') : '(none)',
    ].join('\n');

  const peerH3 = (d: AgentStatus) => d.peers.find((p) => p.name === 'h3');

  it('cloud-init applies the user data, the unit starts and reaches active, and h3 answers its peers\' pings', async () => {
    const h3 = bed.topo.host('h3');
    const work = path.join(bed.topo.workDir, 'vm-h3');
    fs.mkdirSync(work, { recursive: true, mode: 0o700 });
    // The operator's side: a join token for h3 (one use), then the user data (from the CLI, as a
    // person runs it). No key is made here: the VM makes its own.
    const tokenFile = path.join(work, 'h3.token');
    const tok = await cli(bed.topo, bed.topo.routerNs, [
      ...['token', 'create', '--network', NET, '--network-key', networkKeyFile(bed.topo, NET)],
      ...['--name', 'h3', '--uses', '1', '--ttl', '10m', '--out', tokenFile, '--etcd', bed.etcd.endpoint],
    ]);
    expect(tok.code, tok.stderr).toBe(0);
    const userDataFile = path.join(work, 'user-data.yaml');
    const gen = await cli(bed.topo, null, [
      ...['cloud-init', '--name', 'h3', '--network', NET, '--etcd', bed.etcd.endpoint, '--token-file', tokenFile],
      ...['--install', 'present', '--node', 'present', '--out', userDataFile],
    ]);
    expect(gen.code, gen.stderr).toBe(0);
    expect(gen.stderr).toMatch(/warning: this user data holds secrets \(a join token\)/);
    const userData = fs.readFileSync(userDataFile, 'utf8');

    const { node, cli: script, root } = unitExec(UNIT);
    const binds: { src: string; dst?: string }[] = [
      { src: process.execPath, dst: node },
      { src: REPO, dst: root },
    ];
    // A checkout whose node_modules is a symlink (a worktree): bind its target at the same path.
    const modules = path.join(REPO, 'node_modules');
    if (fs.lstatSync(modules).isSymbolicLink()) binds.push({ src: fs.realpathSync(modules) });
    const t0 = Date.now();
    vm = await bootContainer({
      rootfs: (await ensureRootfs()).dir,
      workDir: path.join(work, 'container'),
      machine: `cladnet-${bed.topo.id}`.slice(0, 60),
      netns: h3.ns,
      userData,
      metaData: `instance-id: cladnet-${bed.topo.id}\nlocal-hostname: h3\n`,
      bindRo: binds,
    });
    const c = vm;

    // cloud-init's final stage ran runcmd (enable --now): wait for its result file.
    const result = await waitUntil(
      'cloud-init to finish (/var/lib/cloud/data/result.json)',
      async () => {
        if (c.proc.exitCode !== null) throw new Error(`systemd-nspawn exited (${c.proc.exitCode})\n${dump(c)}`);
        const f = path.join(c.root, 'var/lib/cloud/data/result.json');
        return fs.existsSync(f) ? (JSON.parse(fs.readFileSync(f, 'utf8')) as { v1: { errors: string[]; datasource: string } }) : undefined;
      },
      { timeoutMs: 180_000, intervalMs: 500 },
    ).catch((e: unknown) => {
      throw new Error(`${String(e)}\n${dump(c)}`);
    });
    const bootMs = Date.now() - t0;
    expect(result.v1.errors, dump(c)).toEqual([]);
    expect(result.v1.datasource).toMatch(/NoCloud/);
    expect(await c.exec(['cloud-init', 'status']).then((r) => r.stdout)).toMatch(/status: done/);

    // write_files: modes as the user data says, owner root; the unit is the package's.
    const mode = (p: string) => (fs.statSync(path.join(c.root, p)).mode & 0o777).toString(8);
    expect({ config: mode('etc/cladnet/config.json'), unit: mode('etc/systemd/system/cladnet.service') }).toEqual({ config: '644', unit: '644' });
    expect(fs.statSync(path.join(c.root, 'etc/cladnet/config.json')).uid).toBe(0);
    expect(fs.readFileSync(path.join(c.root, 'etc/systemd/system/cladnet.service'), 'utf8')).toBe(UNIT);
    expect(userData).toContain('path: "/var/lib/cladnet/join.token"');
    expect(userData).not.toContain('path: "/var/lib/cladnet/private.key"');

    // The unit: enabled, active (with its STATUS line when it is Type=notify).
    const st = await waitUntil(
      'cladnet.service active',
      async () => {
        const s = await c.show('cladnet.service', ['ActiveState', 'SubState', 'UnitFileState', 'StatusText', 'MainPID', 'NRestarts', 'Type']);
        return s['ActiveState'] === 'active' && (!NOTIFY || s['StatusText'] !== '') ? s : undefined;
      },
      { timeoutMs: 60_000, intervalMs: 500 },
    ).catch(async (e: unknown) => {
      const j = await c.exec(['journalctl', '-u', 'cladnet.service', '--no-pager', '-n', '40']);
      throw new Error(`${String(e)}\n--- journal\n${j.stdout}${j.stderr}\n${dump(c)}`);
    });
    expect(st['UnitFileState']).toBe('enabled');
    console.log(
      `boot: cloud-init done ${bootMs} ms after systemd-nspawn started; cladnet.service ${st['ActiveState']}/${st['SubState']} (Type=${st['Type']}), ` +
        `STATUS "${st['StatusText']}"${NOTIFY ? '' : ' (unit is not Type=notify in this build: no STATUS line expected)'}`,
    );
    if (NOTIFY) expect(st['StatusText']).not.toBe('');

    // The mesh: h1 and h2 list h3 up, and h3 answers their pings over the overlay.
    const [h1, h2] = [bed.agent('h1'), bed.agent('h2')];
    const docs = await waitUntil(
      'h1 and h2 to see h3 up',
      async () => {
        const ds = await Promise.all([h1.status(), h2.status()]);
        return ds.every((d) => peerH3(d)?.state === 'up') ? ds : undefined;
      },
      { timeoutMs: 30_000, intervalMs: 250 },
    ).catch(async (e: unknown) => {
      const j = await c.exec(['journalctl', '-u', 'cladnet.service', '--no-pager', '-n', '40']);
      throw new Error(`${String(e)}\n--- journal\n${j.stdout}`);
    });
    const ip3 = peerH3(docs[0]!)!.overlayIp;
    // Enrolled by the token: the key was made on the VM (0600), the certificate written beside it,
    // and the token file wiped and removed.
    expect(mode('var/lib/cladnet/private.key')).toBe('600');
    expect(fs.existsSync(path.join(c.root, 'var/lib/cladnet/host.cert'))).toBe(true);
    expect(fs.existsSync(path.join(c.root, 'var/lib/cladnet/join.token'))).toBe(false);
    expect(mode('var/lib/cladnet')).toBe('700');
    for (const a of [h1, h2]) {
      const p = await ping(bed.topo, a.host.ns, ip3, { count: 5 });
      expect(p.received, `${a.name} -> h3 ${ip3}\n${p.output}`).toBe(5);
    }
    if (!WATCHDOG) console.log('cloudinit-boot: systemd/cladnet.service has no WatchdogSec= in this build: the SIGSTOP/watchdog test is skipped');
    // From inside the VM as well: the agent's status socket answers `cladnet status`.
    const s = await c.exec([node, script, 'status', '--json']);
    expect(s.code, s.stderr).toBe(0);
    expect((JSON.parse(s.stdout) as AgentStatus).self.name).toBe('h3');
  }, 300_000);

  it.runIf(WATCHDOG)('SIGSTOP: the watchdog restarts the agent (NRestarts >= 1) and h3 rejoins', async () => {
    expect(vm, 'the boot test did not leave a container').toBeDefined();
    const c = vm!;
    const before = await c.show('cladnet.service', ['MainPID', 'NRestarts']);
    const pid = before['MainPID']!;
    expect(Number(pid)).toBeGreaterThan(0);
    const t0 = Date.now();
    expect((await c.exec(['kill', '-STOP', pid])).code).toBe(0);
    const after = await waitUntil(
      'a restart by the watchdog',
      async () => {
        const s = await c.show('cladnet.service', ['MainPID', 'NRestarts', 'ActiveState', 'StatusText']);
        return Number(s['NRestarts']) >= Number(before['NRestarts']) + 1 && s['ActiveState'] === 'active' && s['MainPID'] !== pid ? s : undefined;
      },
      { timeoutMs: 120_000, intervalMs: 1_000 },
    );
    const restartedMs = Date.now() - t0;
    expect(Number(after['NRestarts'])).toBeGreaterThanOrEqual(1);
    const h1 = bed.agent('h1');
    const ip3 = peerH3(await h1.status())!.overlayIp;
    const reply = await firstReply(bed.topo, h1.host.ns, ip3, { intervalS: 0.2, deadlineS: 60 });
    expect(reply, 'h1 -> h3 after the restart').not.toBeNull();
    const j = await c.exec(['journalctl', '-u', 'cladnet.service', '--no-pager', '-g', 'atchdog']);
    console.log(`watchdog: active again ${restartedMs} ms after SIGSTOP (NRestarts ${after['NRestarts']}, STATUS "${after['StatusText']}"); h1 -> h3 answered ${reply! - t0} ms after SIGSTOP\n${j.stdout.trim()}`);
  }, 180_000);
});
