/**
 * The vmm process's service layers for a backend and a spawn method:
 * VmmDevice (+ what it needs), Process and VmRegistry. bin/vmm adds the
 * imsg layer and the logger; tests that run the server in process use the
 * same wiring with their own imsg layer.
 */
import { Effect, Layer } from "effect"
import type { Backend, SpawnMethod } from "./args.ts"
import * as ProcessDirect from "../layers/ProcessDirect.ts"
import * as ProcessNode from "../layers/ProcessNode.ts"
import * as ProcessSpawner from "../layers/ProcessSpawner.ts"
import * as IoctlNative from "../layers/IoctlNative.ts"
import * as VmmDeviceVmm from "../layers/VmmDeviceVmm.ts"
import * as VmmDeviceProcess from "../layers/VmmDeviceProcess.ts"
import * as VmmDeviceMock from "../layers/VmmDeviceMock.ts"
import { VmRegistryLive } from "../layers/VmRegistryLive.ts"
import { VmRegistry, type VmRegistryService } from "../services/VmRegistry.ts"

/** The registry's started VMs, as the process backend sees them. */
export const registryVms = (registry: VmRegistryService): VmmDeviceProcess.ProcessBackendVms =>
  Effect.map(registry.all, (vms) =>
    vms
      .filter((vm) => vm.pid > 0)
      .map((vm) => ({
        vmmId: vm.vmmid,
        pid: vm.pid,
        name: vm.params.vmc_name,
        memorySize: vm.params.vmc_memranges[0]?.vmr_size ?? 0n,
        ncpus: vm.params.vmc_ncpus
      }))
  )

/** VmSource for the process backend: the registry's started VMs. */
export const vmSourceFromRegistry = Layer.effect(VmmDeviceProcess.VmSource, Effect.map(VmRegistry, registryVms))

export const deviceLayer = (backend: Backend) => {
  switch (backend) {
    case "vmm":
      return VmmDeviceVmm.layer.pipe(Layer.provide(IoctlNative.layer))
    case "process":
      return VmmDeviceProcess.layer.pipe(Layer.provide(vmSourceFromRegistry))
    case "mock":
      return VmmDeviceMock.layer
  }
}

export const processLayer = (spawn: SpawnMethod) => {
  switch (spawn) {
    case "spawner":
      return ProcessSpawner.layerOrNode
    case "direct":
      // where posix_spawn with pidfds cannot run, the spawner (or Node's spawn)
      return ProcessDirect.layerOrWith(ProcessSpawner.layerOrNode, "the spawner")
    case "node":
      return ProcessNode.layer
  }
}

export const vmmServiceLayers = (backend: Backend, spawn: SpawnMethod) =>
  Layer.provideMerge(deviceLayer(backend), Layer.mergeAll(processLayer(spawn), VmRegistryLive.layer))
