"""libp2p_compat entry 17 with py-libp2p's own service manager: `TrioManager.run_task` (called by
pubsub once per message received) finds the new task's parent by walking every task of the
service; with `install_task_index` it looks the running task up instead. The index must give the
parent the walk gives, in every case the walk distinguishes: nested tasks, a plain trio child of
a task (no parent), and a task of another service (not this manager's)."""

from __future__ import annotations

from typing import Any

import trio
from libp2p.tools.anyio_service import Service, background_trio_service
from libp2p.tools.anyio_service.trio_tasks import FunctionTask

from neuroshard_p2p.node.libp2p_compat import install_task_index
from tests.sides import run_side


def walked_parent(manager: Any) -> Any:
    """The parent py-libp2p 0.8.1's `_find_parent_task` finds for the running task: the
    FunctionTask of this manager's tree that runs in it, found by walking the tree."""
    current = trio.lowlevel.current_task()
    for task in FunctionTask.iterate_tasks(*manager._root_tasks):
        if task.has_trio_task and task.trio_task is current:
            return task
    return None


class Tree(Service):
    """Spawns tasks in the shapes above and records, at every spawn, the parent the manager
    found, the walk's, and which task the spawn came from."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Any, Any, Any]] = []
        self.tasks: dict[str, Any] = {}
        self.done = trio.Event()
        self.other: Any = None  # another service's manager

    def spawn(self, manager: Any, label: str, fn: Any, *args: Any, daemon: bool = False) -> None:
        walked = walked_parent(manager)
        found = manager._find_parent_task(trio.lowlevel.current_task())
        self.seen.append((label, found, walked, self.tasks.get(label.split(">")[0])))
        manager.run_task(fn, *args, daemon=daemon, name=label.split(">")[-1])

    async def named(self, name: str) -> None:
        self.tasks[name] = walked_parent(self.manager)

    async def run(self) -> None:
        self.tasks["service"] = walked_parent(self.manager)  # run() is a task of the tree too

        async def leaf(name: str) -> None:
            await self.named(name)
            await trio.sleep_forever()

        async def middle(name: str) -> None:
            await self.named(name)
            self.spawn(self.manager, f"{name}>{name}.leaf", leaf, f"{name}.leaf", daemon=True)
            self.spawn(self.manager, f"{name}>{name}.grand", grand, f"{name}.grand")

        async def grand(name: str) -> None:
            await self.named(name)
            async with trio.open_nursery() as nursery:  # a plain trio task is no FunctionTask
                async def plain() -> None:
                    self.spawn(self.manager, "plain>plain.child", leaf, "plain.child",
                               daemon=True)
                nursery.start_soon(plain)
            # A task of this service spawning into another service's manager.
            self.spawn(self.other, "foreign>foreign.child", leaf, "foreign.child", daemon=True)
            self.done.set()
            await trio.sleep_forever()

        async def root(name: str) -> None:
            await self.named(name)
            self.spawn(self.manager, f"{name}>{name}.middle", middle, f"{name}.middle")
            await trio.sleep_forever()

        self.spawn(self.manager, "service>root", root, "root", daemon=True)
        await trio.sleep_forever()


class Idle(Service):
    async def run(self) -> None:
        await trio.sleep_forever()


async def test_the_index_finds_the_parent_the_walk_finds() -> None:
    install_task_index()
    tree, other = Tree(), Idle()
    async with background_trio_service(other) as other_manager:
        tree.other = other_manager
        async with background_trio_service(tree):
            with trio.fail_after(20):
                await tree.done.wait()
    labels = [label for label, *_ in tree.seen]
    assert labels == ["service>root", "root>root.middle", "root.middle>root.middle.leaf",
                      "root.middle>root.middle.grand", "plain>plain.child",
                      "foreign>foreign.child"]
    for label, found, walked, spawner in tree.seen:
        assert found is walked, label
        if label.startswith(("plain>", "foreign>")):
            # A plain trio task is no FunctionTask, and a task of one service is nothing in
            # another's: the spawn becomes a root task.
            assert found is None, label
        else:
            assert found is spawner and found is not None, label
    assert tree.tasks["root.middle.grand"].parent is tree.tasks["root.middle"]
    assert tree.tasks["root.middle"].parent is tree.tasks["root"]
    assert tree.tasks["root"].parent is tree.tasks["service"]


WALKS = """
import sys, trio
from libp2p.tools.anyio_service import Service, background_trio_service
from libp2p.tools.anyio_service.trio_tasks import FunctionTask
if sys.argv[1] == "index":
    from neuroshard_p2p.node.libp2p_compat import install_task_index
    install_task_index()
visited = [0]
has_trio_task = FunctionTask.has_trio_task.fget
def counted(task):  # the walk asks every FunctionTask it passes
    visited[0] += 1
    return has_trio_task(task)
FunctionTask.has_trio_task = property(counted)

class Busy(Service):
    async def run(self):
        for _ in range(200):  # what pubsub holds: sending loops, messages being validated
            self.manager.run_task(trio.sleep_forever)
        await trio.sleep_forever()

async def main():
    async with background_trio_service(Busy()) as manager:
        while len(list(FunctionTask.iterate_tasks(*manager._root_tasks))) < 201:
            await trio.sleep(0.01)
        await trio.sleep(0.1)
        # As pubsub's reading loop does, in a task of the host's, not of pubsub's service: a
        # burst of 100 messages, each validated in a task of pubsub's.
        before = visited[0]
        for _ in range(100):
            manager.run_task(trio.sleep, 0)
        print(visited[0] - before, flush=True)
        manager.cancel()
trio.run(main)
"""


def test_a_spawn_walks_every_task_as_shipped_and_none_with_the_index() -> None:
    visits = {}
    for side in ("shipped", "index"):
        visits[side] = int(run_side(WALKS, side, timeout=60).split()[0])
    # As shipped, the k-th spawn walks the 200 sleeping tasks, the service's run task and the
    # k - 1 spawned before it (not started yet), finding none of them running: 100 x 201 +
    # 99 x 100 / 2. With the index, no task is walked.
    assert visits == {"shipped": 100 * 201 + 4950, "index": 0}
