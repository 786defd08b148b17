# Images (pushed by cloudbuild.yaml) and run artifacts (ARTIFACT_ROOT).
resource "google_artifact_registry_repository" "images" {
  count         = var.image_registry == "" ? 1 : 0
  project       = var.project
  location      = var.region
  repository_id = var.artifact_registry_repository
  format        = "DOCKER"
  description   = "lbtrain service, job and serving images (cloudbuild.yaml)"
  depends_on    = [google_project_service.apis]
}

resource "google_storage_bucket" "artifacts" {
  project                     = var.project
  name                        = local.bucket
  location                    = var.region
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = false

  # Run artifacts ({ARTIFACT_ROOT}/runs/{run_id}/{stage}/a{attempt}/) are read rarely after a run ends.
  lifecycle_rule {
    condition {
      age            = 30
      matches_prefix = ["runs/"]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }
  # Optional expiry. A deployed champion is served from its run's model/, so keep it longer than
  # any model stays deployed (0 keeps artifacts forever).
  dynamic "lifecycle_rule" {
    for_each = var.artifact_retention_days > 0 ? [var.artifact_retention_days] : []
    content {
      condition {
        age            = lifecycle_rule.value
        matches_prefix = ["runs/"]
      }
      action {
        type = "Delete"
      }
    }
  }
  lifecycle_rule {
    condition {
      age = 1
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }
  depends_on = [google_project_service.apis]
}
