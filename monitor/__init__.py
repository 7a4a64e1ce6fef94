"""RadSentry monitoring: event contract, DICOM features, ingestion, API."""
