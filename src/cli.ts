#!/usr/bin/env node
/**
 * The `cladnet` command. Commands only parse, call into the agent or control plane, and print;
 * errors print their message (and code) without a stack trace and exit 1.
 */
import { Command, Option } from 'commander';
import { loadAgentConfig } from './config/config';
import { CladnetError } from './errors';
import { createRootLogger } from './log';

const DEFAULT_SOCKET = '/run/cladnet/cladnet.sock';
const etcdOption = () =>
  new Option('--etcd <urls>', 'etcd endpoints, comma separated').env('CLADNET_ETCD').default('http://127.0.0.1:2379');

function urls(s: string): string[] {
  return s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
}

async function withEtcd<T>(etcd: string, fn: (client: import('etcd3').Etcd3) => Promise<T>): Promise<T> {
  const { createEtcd } = await import('./control/etcd');
  const client = createEtcd({ endpoints: urls(etcd) });
  try {
    return await fn(client);
  } finally {
    client.close();
  }
}

function print(obj: unknown, json: boolean, text: () => string): void {
  process.stdout.write((json ? JSON.stringify(obj, null, 2) : text()) + '\n');
}

export function buildProgram(): Command {
  const program = new Command('cladnet')
    .description('Cloud Adaptive Network: an encrypted full-mesh overlay for VMs across clouds')
    .version(require('../package.json').version as string)
    .showHelpAfterError();

  program
    .command('agent')
    .description('run the agent (foreground; for systemd)')
    .option('--config <file>', 'JSON config file', process.env.CLADNET_CONFIG)
    .option('--etcd <urls>', 'etcd endpoints, comma separated')
    .option('--network <name>', 'network to join')
    .option('--name <host>', 'this host\'s name in the network (default: hostname)')
    .option('--interface <ifname>', 'TUN interface name (default cladnet0)')
    .option('--listen-port <port>', 'UDP port (default: the network\'s port)')
    .option('--state-dir <dir>', 'keys and state (default /var/lib/cladnet)')
    .option('--socket <path>', `status socket (default ${DEFAULT_SOCKET})`)
    .option('--log-level <level>', 'fatal|error|warn|info|debug|trace|silent (default info)')
    .option('--batch <n>', 'packets per data-plane batch (default 64)')
    .option('--crypto <backend>', 'AEAD backend: auto|native|wasm (default auto)')
    .option('--offload <bool>', 'TUN segmentation/checksum offloads (default true)')
    .option('--advertise <endpoints>', 'endpoints to publish instead of interface addresses (ip or ip:port, comma separated)')
    .action(async (opts: Record<string, unknown>) => {
      const { config, ...flags } = opts;
      const cfg = loadAgentConfig({ file: config as string | undefined, env: process.env, flags });
      const log = createRootLogger(cfg.logLevel);
      const { Agent } = await import('./agent/agent');
      const agent = new Agent(cfg, log);
      let signalled = false;
      const onSignal = (sig: NodeJS.Signals) => {
        if (signalled) return;
        signalled = true;
        log.info({ signal: sig }, 'signal received');
        agent.stop().then(
          () => process.exit(0),
          () => process.exit(1),
        );
      };
      process.on('SIGTERM', onSignal);
      process.on('SIGINT', onSignal);
      try {
        await agent.start();
      } catch (e) {
        await agent.stop();
        throw e;
      }
    });

  const network = program.command('network').description('manage networks in etcd');
  network
    .command('create <name>')
    .description('create a network with an overlay CIDR')
    .requiredOption('--cidr <cidr>', 'overlay range, private or CGNAT (e.g. 100.64.0.0/24)')
    .option('--mtu <n>', 'overlay MTU (default 1420)')
    .option('--port <n>', 'default UDP port (default 51820)')
    .addOption(etcdOption())
    .option('--json', 'print JSON')
    .action(async (name: string, o: { cidr: string; mtu?: string; port?: string; etcd: string; json?: boolean }) => {
      const { createNetwork } = await import('./control/networks');
      const num = (v: string | undefined, field: string) => {
        if (v === undefined) return undefined;
        if (!/^\d+$/.test(v)) throw new CladnetError('ECONFIG', `${field}: "${v}" is not a number`, { field });
        return Number(v);
      };
      const input = { name, cidr: o.cidr, mtu: num(o.mtu, 'mtu'), port: num(o.port, 'port') };
      const spec = await withEtcd(o.etcd, (c) => createNetwork(c, input));
      print(spec, !!o.json, () => `created network ${spec.name}: ${spec.cidr}, mtu ${spec.mtu}, port ${spec.port}`);
    });
  network
    .command('list')
    .description('list networks')
    .addOption(etcdOption())
    .option('--json', 'print JSON')
    .action(async (o: { etcd: string; json?: boolean }) => {
      const { listNetworks } = await import('./control/networks');
      const list = await withEtcd(o.etcd, (c) => listNetworks(c));
      print(list, !!o.json, () =>
        list.length === 0 ? 'no networks' : list.map((n) => `${n.name}\t${n.cidr}\tmtu ${n.mtu}\tport ${n.port}`).join('\n'),
      );
    });
  network
    .command('show <name>')
    .description('show a network and its hosts')
    .addOption(etcdOption())
    .option('--json', 'print JSON')
    .action(async (name: string, o: { etcd: string; json?: boolean }) => {
      const { getNetwork } = await import('./control/networks');
      const { listHosts } = await import('./control/hosts');
      const [spec, hosts] = await withEtcd(o.etcd, async (c) => [await getNetwork(c, name), await listHosts(c, name)] as const);
      print({ network: spec, hosts }, !!o.json, () =>
        [
          `${spec.name}: ${spec.cidr}, mtu ${spec.mtu}, port ${spec.port}, created ${spec.created}`,
          ...hosts.map((h) => `  ${h.name}\t${h.overlayIp}\t${h.alive ? 'alive' : 'gone'}\t${h.endpoints.join(',')}`),
        ].join('\n'),
      );
    });
  network
    .command('delete <name>')
    .description('delete a network and everything under it')
    .addOption(etcdOption())
    .action(async (name: string, o: { etcd: string }) => {
      const { deleteNetwork } = await import('./control/networks');
      await withEtcd(o.etcd, (c) => deleteNetwork(c, name));
      process.stdout.write(`deleted network ${name}\n`);
    });
  network
    .command('recommend')
    .description('suggest overlay ranges that no host network or existing network uses')
    .option('--prefix-len <n>', 'size of the suggested ranges (default /16)')
    .addOption(etcdOption())
    .option('--json', 'print JSON')
    .action(async (o: { etcd: string; json?: boolean; prefixLen?: string }) => {
      const { recommend } = await import('./control/plan');
      const prefixLen = o.prefixLen === undefined ? undefined : Number(o.prefixLen);
      const r = await withEtcd(o.etcd, (c) => recommend(c, { prefixLen }));
      print(r, !!o.json, () =>
        [
          `in use: ${r.used.join(', ') || 'nothing yet'}`,
          `free /${r.prefixLen} ranges: ${r.candidates.join(', ') || 'none'}`,
        ].join('\n'),
      );
    });

  program
    .command('status')
    .description('show this host\'s agent: peers, paths, traffic, drops')
    .option('--socket <path>', 'status socket', process.env.CLADNET_SOCKET ?? DEFAULT_SOCKET)
    .option('--json', 'print the status document (version 1)')
    .action(async (o: { socket: string; json?: boolean }) => {
      const { fetchStatus, renderStatus } = await import('./status/client');
      const doc = await fetchStatus(o.socket);
      print(doc, !!o.json, () => renderStatus(doc));
    });

  program
    .command('demo')
    .description('a local demo: etcd and three hosts in network namespaces, meshed (root)')
    .option('--hosts <n>', 'number of hosts', '3')
    .action(async (o: { hosts: string }) => {
      const { runDemo } = await import('./demo/demo');
      await runDemo({ hosts: Number(o.hosts) });
    });

  return program;
}

if (require.main === module) {
  buildProgram()
    .parseAsync(process.argv)
    .catch((e: unknown) => {
      if (e instanceof CladnetError) process.stderr.write(`cladnet: ${e.message} [${e.code}]\n`);
      else process.stderr.write(`cladnet: ${e instanceof Error ? e.stack ?? e.message : String(e)}\n`);
      process.exit(1);
    });
}
