import type { Implementation } from './types';

/** No tunnel: iperf3 straight between the two underlay addresses, through the router namespace. */
export const veth: Implementation = {
  name: 'veth',
  needs: [],
  version: async () => null,
  async start(ctx) {
    const dev = (ns: string) => ctx.topo.plan.hosts.find((h) => h.ns === ns)!.dev;
    return {
      a: { ns: ctx.a.ns, ip: ctx.a.underlayIp, dev: dev(ctx.a.ns) },
      b: { ns: ctx.b.ns, ip: ctx.b.underlayIp, dev: dev(ctx.b.ns) },
      procs: [],
      notes: { path: 'veth -> router namespace -> veth', mtu: 1500 },
      stop: async () => {},
    };
  },
};
