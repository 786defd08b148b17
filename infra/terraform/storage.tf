# Images (pushed by cloudbuild.yaml) and run artifacts (ARTIFACT_ROOT).
resource "google_artifact_registry_repository" "images" {
  #checkov:skip=CKV_GCP_84:images are built from this repository's public source; Google-managed encryption at rest suffices
  count         = var.image_registry == "" ? 1 : 0
  project       = var.project
  location      = var.region
  repository_id = var.artifact_registry_repository
  format        = "DOCKER"
  description   = "lbtrain service, job and serving images (cloudbuild.yaml)"
  depends_on    = [google_project_service.apis]
}

resource "google_storage_bucket" "artifacts" {
  #checkov:skip=CKV_GCP_62:usage logs would need a second bucket; only lbtrain's own service accounts hold object roles (iam.tf: write only the launchers and jobs), and IAM or bucket changes are in the Admin Activity audit log (turn on Data Access audit logs for storage where object reads must be logged)
  #checkov:skip=CKV_GCP_78:objects are written once per attempt path (runs/{run}/{stage}/a{attempt}) and re-created by re-running; versioning would only keep copies, and soft delete (on by default, 7 days) already keeps deleted objects
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
