"""What the tests share: local stand-ins for the network (Orthanc, moto's S3, a GCS emulator,
a DICOMweb stub, a fault-injecting proxy, a one-node Slurm), DICOM series and faults, scores
for comparing labellings, fixtures for the network backends, and running the workflow."""
