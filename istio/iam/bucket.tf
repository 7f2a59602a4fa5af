# Optional: the audit bucket and the writer/auditor policies with Terraform
# (AWS provider >= 5). Same settings as `extproc-audit init-bucket` and
# docs/ISTIO.md's CLI steps. Replace the bucket name in the policy files, or
# template them, before use.

variable "bucket" {
  type    = string
  default = "example-audit-bucket"
}

variable "retention_days" {
  type    = number
  default = 365
}

resource "aws_s3_bucket" "audit" {
  bucket = var.bucket
  # Object Lock can only be enabled at creation; it also turns versioning on.
  object_lock_enabled = true
}

resource "aws_s3_bucket_versioning" "audit" {
  bucket = aws_s3_bucket.audit.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_object_lock_configuration" "audit" {
  bucket = aws_s3_bucket.audit.id
  rule {
    default_retention {
      # COMPLIANCE: nobody, the root account included, shortens or removes it.
      mode = "COMPLIANCE"
      days = var.retention_days
    }
  }
}

resource "aws_s3_bucket_public_access_block" "audit" {
  bucket                  = aws_s3_bucket.audit.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_iam_policy" "writer" {
  name   = "extproc-audit-writer"
  policy = file("${path.module}/writer-policy.json")
}

resource "aws_iam_policy" "auditor" {
  name   = "extproc-audit-auditor"
  policy = file("${path.module}/auditor-policy.json")
}
