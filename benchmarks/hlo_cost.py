"""Kernels, loops, FLOPs and bytes read from an optimized HLO module's text, for a cost model.

`kernels(text)` walks the module from its entry computation as a device runs it: every
instruction of the entry, of a while loop's condition and body, of a called computation or of a
conditional's branches that is not bookkeeping (parameters, constants, tuples, bitcasts) is one
kernel; a fusion is one kernel whatever it holds. Each kernel is listed once with
`executions`, the product of the trip counts of the loops around it, and `loops`, the while
instructions it runs in (innermost last).

* Trip counts are XLA's `known_trip_count`; a loop without one (a data-dependent loop, such as
  rejection sampling) counts as `unknown_trips` iterations and is flagged.
* Matmul FLOPs are those of the `dot`s and `convolution`s a kernel holds: 2 x output elements x
  the contracted size (for a convolution, the filter's elements per output feature). Other FLOPs
  (elementwise) are not counted: that work is taken as memory-bound.
* Bytes are the kernel's operands and result, with what XLA does in place: a `dynamic-slice` of
  an operand reads only the slice, and a `dynamic-update-slice` writes only the update (its
  buffer operand is not read). Those sliced reads and writes are also given as `streamed_bytes`:
  in a loop body they are the per-step inputs and outputs, the rest being the carried state.

XLA's own `cost_analysis()` counts a while body once, whatever its trip count (checked on
jax 0.10.2 by a 10-step scan of matmuls); this walk multiplies it by the trip count.
"""

from __future__ import annotations

import dataclasses
import math
import re

DTYPE_BYTES = {'pred': 1, 's8': 1, 'u8': 1, 's16': 2, 'u16': 2, 'f16': 2, 'bf16': 2, 's32': 4,
               'u32': 4, 'f32': 4, 's64': 8, 'u64': 8, 'f64': 8, 'c64': 8, 'c128': 16,
               'f8e4m3fn': 1, 'f8e5m2': 1, 's4': 1, 'u4': 1}
BOOKKEEPING = frozenset({'parameter', 'constant', 'get-tuple-element', 'tuple', 'bitcast',
                         'after-all', 'partition-id', 'replica-id', 'opt-barrier'})
ELEMENTWISE = frozenset({
    'abs', 'add', 'and', 'atan2', 'bitcast', 'broadcast', 'cbrt', 'ceil', 'clamp', 'compare',
    'concatenate', 'constant', 'convert', 'copy', 'cosine', 'divide', 'erf', 'exponential',
    'exponential-minus-one', 'floor', 'iota', 'is-finite', 'log', 'log-plus-one', 'logistic',
    'maximum', 'minimum', 'multiply', 'negate', 'not', 'or', 'pad', 'parameter', 'popcnt',
    'power', 'remainder', 'reshape', 'reverse', 'round-nearest-afz', 'round-nearest-even',
    'rsqrt', 'select', 'shift-left', 'shift-right-arithmetic', 'shift-right-logical', 'sign',
    'sine', 'slice', 'sqrt', 'subtract', 'tan', 'tanh', 'transpose', 'xor'})
_ARRAY = re.compile(r'\b(' + '|'.join(DTYPE_BYTES) + r')\[([\d,]*)\]')
_HEADER = re.compile(r'^(ENTRY )?%(\S+) .*\{$')
_INSTRUCTION = re.compile(r'^\s*(?:ROOT )?%(\S+) = (.*)$')


@dataclasses.dataclass(frozen=True)
class Instruction:
  name: str
  shape: str  # The result's shape as printed, e.g. 'f32[8,32]{1,0}' or a tuple.
  opcode: str
  operands: tuple[str, ...]
  arguments: str  # The text inside the parentheses: operands, or a parameter's number.
  attributes: str  # Everything after the operand list.


@dataclasses.dataclass
class Kernel:
  """One kernel launch site and what each execution of it costs."""

  name: str
  opcode: str
  executions: int  # Per run of the module: the trip counts of the loops around it multiplied.
  loops: tuple[str, ...]  # The while instructions it runs in, outermost first.
  matmul_flops: int
  bytes: int
  streamed_bytes: int  # Of `bytes`: dynamic-slice reads and dynamic-update-slice writes.
  op_name: str  # JAX's name for it (metadata), '' when none.
  output_bytes: int = 0
  elementwise: bool = False  # Only elementwise and layout ops: fusable into its consumer.
  consumer: str | None = None  # The one kernel using its result, in the same computation.
  merged: bool = False  # Fused into `consumer` by `fuse_elementwise`.
  group_bytes: int = 0  # `bytes` with the elementwise producers fused into it; 0 when merged.


@dataclasses.dataclass(frozen=True)
class Loop:
  """A while instruction: its trip count per execution and how often it runs."""

  name: str
  trips: int
  known: bool  # False: data-dependent, `trips` is the assumed count.
  executions: int  # Times the loop itself is started per run of the module.
  body_kernels: int  # Kernels per iteration, condition included (nested loops' not).
  op_name: str


def array_bytes(shape: str) -> int:
  """Bytes of every array in a (possibly tuple) shape."""
  return sum(DTYPE_BYTES[dtype] * math.prod(int(d) for d in dims.split(',') if d)
             for dtype, dims in _ARRAY.findall(shape))


def dims(shape: str) -> list[int]:
  """The dimensions of an array shape."""
  match = _ARRAY.search(shape)
  return [int(d) for d in match.group(2).split(',') if d] if match else []


def _split_shape(rest: str) -> tuple[str, str]:
  """'(a, b) op(...)' or 'f32[2]{0} op(...)' -> (shape, 'op(...)')."""
  if rest.startswith('('):
    depth = 0
    for i, char in enumerate(rest):
      depth += {'(': 1, ')': -1}.get(char, 0)
      if depth == 0:
        return rest[:i + 1], rest[i + 1:].lstrip()
  shape, _, tail = rest.partition(' ')
  return shape, tail


def _parse_instruction(line: str) -> Instruction | None:
  match = _INSTRUCTION.match(line)
  if not match:
    return None
  name, rest = match.groups()
  shape, tail = _split_shape(rest)
  opcode, _, args = tail.partition('(')
  depth, end = 1, len(args)
  for i, char in enumerate(args):
    depth += {'(': 1, ')': -1}.get(char, 0)
    if depth == 0:
      end = i
      break
  operands = tuple(re.findall(r'%([^\s,()]+)', args[:end]))
  return Instruction(name, shape, opcode.strip(), operands, args[:end], args[end + 1:])


def parse_module(text: str) -> tuple[dict[str, list[Instruction]], str]:
  """{computation name: its instructions} and the entry computation's name."""
  computations: dict[str, list[Instruction]] = {}
  entry, current = '', None
  for line in text.splitlines():
    header = _HEADER.match(line)
    if header and ' = ' not in line.split('(')[0]:
      current = header.group(2)
      computations[current] = []
      entry = current if header.group(1) else entry
    elif line.startswith('}'):
      current = None
    elif current is not None:
      instruction = _parse_instruction(line)
      if instruction is not None:
        computations[current].append(instruction)
  return computations, entry


def _attribute(instruction: Instruction, key: str) -> str | None:
  match = re.search(key + r'=%?([^\s,}]+)', instruction.attributes)
  return match.group(1) if match else None


def _op_name(instruction: Instruction) -> str:
  match = re.search(r'op_name="([^"]*)"', instruction.attributes)
  return match.group(1) if match else ''


def _matmul_flops(instruction: Instruction, shapes: dict[str, str]) -> int:
  """FLOPs of one dot or convolution instruction (0 for anything else)."""
  out = math.prod(dims(instruction.shape))
  if instruction.opcode == 'dot':
    lhs = dims(shapes[instruction.operands[0]])
    contracting = _attribute(instruction, 'lhs_contracting_dims') or ''
    size = math.prod(lhs[int(i)] for i in re.findall(r'\d+', contracting))
    return 2 * out * size
  if instruction.opcode == 'convolution':
    rhs = dims(shapes[instruction.operands[1]])
    labels = re.search(r'dim_labels=\w+_(\w+)->', instruction.attributes).group(1)
    return 2 * out * math.prod(rhs) // rhs[labels.index('o')]
  return 0


class _Walker:
  """The recursive walk of `kernels`."""

  def __init__(self, text: str, unknown_trips: int):
    self.computations, self.entry = parse_module(text)
    self.shapes = {c: {i.name: i.shape for i in instructions}
                   for c, instructions in self.computations.items()}
    self.unknown_trips = unknown_trips
    self.kernels: list[Kernel] = []
    self.loops: list[Loop] = []

  def fused_flops(self, computation: str) -> int:
    total = 0
    for instruction in self.computations[computation]:
      total += _matmul_flops(instruction, self.shapes[computation])
      called = _attribute(instruction, 'calls')
      if called in self.computations:
        total += self.fused_flops(called)
    return total

  def fused_bytes(self, instruction: Instruction, outer: dict[str, str]) -> tuple[int, int]:
    """(bytes, streamed bytes) of a fusion, reading through its slices and in-place updates."""
    fused = self.computations[_attribute(instruction, 'calls')]
    index = {i.name: int(i.arguments) for i in fused if i.opcode == 'parameter'}
    users: dict[str, list[Instruction]] = {name: [] for name in index}
    for i in fused:
      for operand in i.operands:
        if operand in users:
          users[operand].append(i)
    root = fused[-1]
    updates = [root] if root.opcode == 'dynamic-update-slice' else []
    if root.opcode == 'tuple':
      by_name = {i.name: i for i in fused}
      updates = [by_name[o] for o in root.operands
                 if o in by_name and by_name[o].opcode == 'dynamic-update-slice']
    fused_shapes = self.shapes[_attribute(instruction, 'calls')]
    in_place = {u.operands[0] for u in updates}
    streamed = sum(array_bytes(fused_shapes[u.operands[1]]) for u in updates)
    total = array_bytes(instruction.shape) - sum(array_bytes(u.shape) for u in updates) + streamed
    for name, uses in users.items():
      if name in in_place:
        continue
      if uses and all(u.opcode in ('dynamic-slice', 'slice') for u in uses):
        sliced = sum(array_bytes(u.shape) for u in uses)
        total += sliced
        streamed += sliced if all(u.opcode == 'dynamic-slice' for u in uses) else 0
      else:
        operand = instruction.operands[index[name]]
        total += array_bytes(outer.get(operand, fused_shapes[name]))
    return total, streamed

  def elementwise(self, instruction: Instruction) -> bool:
    if instruction.opcode == 'fusion':
      called = _attribute(instruction, 'calls')
      return (_attribute(instruction, 'kind') == 'kLoop'
              and all(i.opcode in ELEMENTWISE for i in self.computations[called]))
    return instruction.opcode in ELEMENTWISE

  def cost(self, instruction: Instruction, computation: str) -> tuple[int, int, int]:
    """(matmul FLOPs, bytes, streamed bytes) of one kernel."""
    shapes = self.shapes[computation]
    if instruction.opcode == 'fusion':
      called = _attribute(instruction, 'calls')
      return (self.fused_flops(called), *self.fused_bytes(instruction, shapes))
    if instruction.opcode == 'dynamic-slice':
      return 0, 2 * array_bytes(instruction.shape), array_bytes(instruction.shape)
    if instruction.opcode == 'dynamic-update-slice':
      update = array_bytes(shapes[instruction.operands[1]])
      return 0, 2 * update, update
    operand_bytes = sum(array_bytes(shapes[o]) for o in instruction.operands if o in shapes)
    return (_matmul_flops(instruction, shapes), operand_bytes + array_bytes(instruction.shape),
            0)

  def walk(self, computation: str, executions: int, loops: tuple[str, ...]) -> int:
    """Lists the kernels of `computation`; returns how many it launches per execution, not
    counting those of the loops it starts."""
    launched = 0
    users: dict[str, list[str]] = {}
    for instruction in self.computations[computation]:
      for operand in instruction.operands:
        users.setdefault(operand, []).append(instruction.name)
    for instruction in self.computations[computation]:
      if instruction.opcode in BOOKKEEPING:
        continue
      if instruction.opcode == 'while':
        self.walk_loop(instruction, executions, loops)
      elif instruction.opcode in ('call', 'conditional'):
        branches = re.findall(r'%([^\s,}]+)', instruction.attributes.split('metadata=')[0])
        for branch in [b for b in branches if b in self.computations]:
          launched += self.walk(branch, executions, loops)  # Every branch: an upper bound.
      else:
        flops, size, streamed = self.cost(instruction, computation)
        used_by = users.get(instruction.name, [])
        self.kernels.append(Kernel(
            f'{computation}/{instruction.name}', instruction.opcode, executions, loops, flops,
            size, streamed, _op_name(instruction), array_bytes(instruction.shape),
            self.elementwise(instruction),
            f'{computation}/{used_by[0]}' if len(used_by) == 1 else None))
        launched += 1
    return launched

  def walk_loop(self, instruction: Instruction, executions: int, loops: tuple[str, ...]) -> None:
    trip = re.search(r'"known_trip_count":\{"n":"(\d+)"', instruction.attributes)
    trips = int(trip.group(1)) if trip else self.unknown_trips
    inner = loops + (instruction.name,)
    body = self.walk(_attribute(instruction, 'body'), executions * trips, inner)
    condition = self.walk(_attribute(instruction, 'condition'), executions * trips, inner)
    self.loops.append(Loop(instruction.name, trips, trip is not None, executions,
                           body + condition, _op_name(instruction)))


def fuse_elementwise(found: list[Kernel]) -> None:
  """Fuses, in place, each elementwise kernel whose result has one user, a kernel without
  matmuls, into that user, as XLA:GPU's producer-consumer fusion would (XLA:CPU fuses far less:
  it keeps most elementwise ops as kernels of their own). The merged kernel's result no longer
  goes through memory: its user's `group_bytes` gains the producer's bytes less twice its
  result's."""
  by_name = {k.name: k for k in found}
  carried = {k.name: 0 for k in found}
  for kernel in found:  # Producers come before their users in the text.
    consumer = by_name.get(kernel.consumer) if kernel.consumer else None
    total = kernel.bytes + carried[kernel.name]
    if kernel.elementwise and consumer is not None and not consumer.matmul_flops:
      kernel.merged, kernel.group_bytes = True, 0
      carried[consumer.name] += max(0, total - 2 * kernel.output_bytes)
    else:
      kernel.group_bytes = total


def kernels(text: str, unknown_trips: int = 2) -> tuple[list[Kernel], list[Loop]]:
  """Every kernel and every while loop of an optimized HLO module's text (see the module), with
  `fuse_elementwise`'s estimate of GPU-like fusion."""
  walker = _Walker(text, unknown_trips)
  walker.walk(walker.entry, 1, ())
  fuse_elementwise(walker.kernels)
  return walker.kernels, walker.loops
