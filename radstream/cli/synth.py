"""`radstream synth`: synthetic studies with known ground truth."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def synth(
    out: Annotated[Path, typer.Argument(help="output folder (DICOM files + ground_truth.json)")],
    seed: Annotated[int, typer.Option(help="same seed, same studies")] = 0,
    brain: Annotated[int, typer.Option(help="brain MR patients")] = 1,
    liver: Annotated[int, typer.Option(help="abdominal CT patients")] = 1,
    hips: Annotated[int, typer.Option(help="pelvis radiograph patients")] = 1,
    timepoints: Annotated[int, typer.Option(help="studies per patient")] = 3,
    mr_size: Annotated[str, typer.Option(help="columns x rows x slices (512x512x2000 is about 1 GB)")] = "64x64x32",
    ct_size: Annotated[str, typer.Option(help="columns x rows x slices")] = "64x64x40",
    dx_size: Annotated[str, typer.Option(help="columns x rows per radiograph (1600x1600 is about 5 MB)")] = "256x256",
    dx_images: Annotated[int, typer.Option(help="radiographs per exam")] = 2,
    from_nifti: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="instead: write this NIfTI volume as one DICOM MR series into OUT (e.g. Colin27's ch2.nii.gz)")] = None,
    patient_id: Annotated[str, typer.Option(help="with --from-nifti: Patient ID")] = "NIFTI-0001",
    series_description: Annotated[str, typer.Option(help="with --from-nifti")] = "T1 3D (NIfTI)",
    reference_mask: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="with --from-nifti: also this mask of the volume (e.g. ch2bet.nii.gz) as a DICOM SEG on the series, "
             "written to --reference-seg; send it from a reference source's AE title")] = None,
    reference_seg: Annotated[Optional[Path], typer.Option(  # noqa: UP045
        help="with --reference-mask: the SEG file to write (outside OUT)")] = None,
    mask_label: Annotated[str, typer.Option(help="with --reference-mask: the segment's label")] = "brain",
) -> None:
    """Write synthetic brain MR, liver CT and pelvis DX studies plus their ground truth (phantoms, not patients)."""
    if from_nifti is not None:
        from radstream.synth.nifti import nifti_to_dicom

        s = nifti_to_dicom(from_nifti, out, patient_id=patient_id, series_description=series_description)
        typer.echo(f"wrote {len(s.files)} MR instances ({s.shape[2]}x{s.shape[1]}x{s.shape[0]}, spacing "
                   f"{'x'.join(f'{v:g}' for v in s.spacing)} mm) of series {s.series_uid} into {out}")
        if reference_mask is not None:
            from radstream.synth.nifti import nifti_mask_to_seg

            if reference_seg is None:
                raise typer.BadParameter("--reference-mask needs --reference-seg PATH (outside OUT)")
            typer.echo(f"wrote {nifti_mask_to_seg(reference_mask, s, reference_seg, label=mask_label)}")
        return
    from radstream.synth import SynthConfig, synthesize

    cols, rows = (int(v) for v in dx_size.lower().split("x"))
    cfg = SynthConfig(
        seed=seed, brain_patients=brain, liver_patients=liver, hip_patients=hips, timepoints=timepoints,
        mr_shape=SynthConfig.shape3(mr_size), ct_shape=SynthConfig.shape3(ct_size), dx_size=(rows, cols),
        dx_images=dx_images,
    )
    truth = synthesize(out, cfg)
    files = sum(len(se["files"]) for s in truth["studies"] for se in s["series"])
    typer.echo(f"wrote {len(truth['studies'])} studies, {files} files, ground truth in {out / 'ground_truth.json'}")
