"""Render-only level of detail for MuJoCo meshes: fewer triangles, identical physics.

Why: on a CPU rasteriser (Mesa llvmpipe) a MuJoCo frame costs about one microsecond per mesh
triangle, whatever the image size, because every triangle's vertices are shaded on the CPU. MetaWorld's
Sawyer arm alone has ~68k triangles, so a 64 px frame takes ~18 ms — most of a VLA rollout step on a
CPU machine — while at that size most triangles cover less than a pixel.

What: vertex clustering (Rossignac & Borrel, 1993). The vertices of each mesh are snapped to a grid
whose cell is ``cell_fraction`` of the mesh's largest extent; every triangle is re-pointed at one
representative vertex per cell; triangles that collapse (two corners in one cell) or repeat are
dropped. Only ``mesh_face`` (and its normal / texture-coordinate indices) and ``mesh_facenum`` change:
vertex positions and the convex hulls MuJoCo collides with are untouched, so simulation is bit-identical
(tests/test_metaworld.py checks it). It must run before the renderer uploads the meshes (the GL context
is created on the first render).
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["simplify_meshes"]


def simplify_meshes(model: Any, cell_fraction: float) -> tuple[int, int]:
    """Simplify every mesh of ``model`` (a ``mujoco.MjModel``) in place for rendering.

    Returns ``(faces_before, faces_after)`` over all meshes. ``cell_fraction <= 0`` changes nothing.
    """
    before = int(np.sum(model.mesh_facenum))
    if cell_fraction <= 0 or model.nmesh == 0:
        return before, before
    has_normals = model.mesh_facenormal.size > 0
    has_texcoords = model.mesh_facetexcoord.size > 0
    for mesh in range(model.nmesh):
        v0, nv = int(model.mesh_vertadr[mesh]), int(model.mesh_vertnum[mesh])
        f0, nf = int(model.mesh_faceadr[mesh]), int(model.mesh_facenum[mesh])
        if nf < 64:  # boxes and other simple shapes: nothing to gain
            continue
        keep, faces = _cluster_faces(model.mesh_vert[v0:v0 + nv], model.mesh_face[f0:f0 + nf], cell_fraction)
        k = len(keep)
        model.mesh_face[f0:f0 + k] = faces[keep]
        if has_normals:
            model.mesh_facenormal[f0:f0 + k] = model.mesh_facenormal[f0:f0 + nf][keep].copy()
        if has_texcoords and model.mesh_texcoordadr[mesh] >= 0:
            model.mesh_facetexcoord[f0:f0 + k] = model.mesh_facetexcoord[f0:f0 + nf][keep].copy()
        model.mesh_facenum[mesh] = k
    return before, int(np.sum(model.mesh_facenum))


def _cluster_faces(verts: np.ndarray, faces: np.ndarray, cell_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """``(indices of the faces to keep, all faces re-pointed at their cell's representative vertex)``."""
    low = verts.min(0)
    cell = cell_fraction * max(float((verts.max(0) - low).max()), 1e-12)
    keys = np.floor((verts - low) / cell).astype(np.int64)  # [V, 3] grid cell of each vertex
    _, first_in_cell, cell_of = np.unique(keys, axis=0, return_index=True, return_inverse=True)
    representative = first_in_cell[cell_of.reshape(-1)]  # [V] the vertex that stands for its cell
    remapped = representative[faces]  # [F, 3]
    a, b, c = remapped[:, 0], remapped[:, 1], remapped[:, 2]
    alive = np.flatnonzero((a != b) & (b != c) & (a != c))
    # a triangle and its copies (same three corners) are drawn once; the first keeps its winding
    _, first = np.unique(np.sort(remapped[alive], axis=1), axis=0, return_index=True)
    return alive[np.sort(first)], remapped
