#!/usr/bin/env node
// The `cladnet` command as installed (package.json "bin"). Plain JavaScript in the oldest syntax
// on purpose: it must run on any Node, check the version first, and only then load the compiled
// program (dist/cli.js), whose syntax and APIs need Node 20. An older Node gets one clear line
// and exit code 1 instead of a stack trace from somewhere inside a dependency.
'use strict';

var MIN_MAJOR = 20;

/** null when `version` ("20.11.1") is new enough, else the message to print. */
function nodeVersionProblem(version, execPath) {
  var major = parseInt(String(version).split('.')[0], 10);
  if (major >= MIN_MAJOR) return null;
  return (
    'cladnet: needs Node.js ' + MIN_MAJOR + ' or newer, but ' + execPath + ' is Node.js ' + version + '.\n' +
    '  Debian 12 ships Node.js 18: install Node.js ' + MIN_MAJOR + ' (e.g. from NodeSource or the\n' +
    '  official tarball at https://nodejs.org) and run cladnet with that node.\n'
  );
}

module.exports = { nodeVersionProblem: nodeVersionProblem, MIN_MAJOR: MIN_MAJOR };

if (require.main === module) {
  var problem = nodeVersionProblem(process.versions.node, process.execPath);
  if (problem) {
    process.stderr.write(problem);
    process.exit(1);
  }
  require('../dist/cli.js').main(process.argv);
}
